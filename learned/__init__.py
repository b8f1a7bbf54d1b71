"""Learned structured pruning in the style of Compresso: hard-concrete gates on the traced groups, trained with LoRA.

- :mod:`learned.hard_concrete` -- the gate distribution; :mod:`learned.gates` -- one gate per
  unit of every planned group, applied through :func:`pruners.attach_gate_source`, to the
  adapters too (:mod:`learned.adapted_gates`);
- :mod:`learned.expected_size` -- the differentiable expected parameter count;
  :mod:`learned.lagrangian` -- the size constraint;
- :mod:`learned.prompt` -- the collaborative prompt; :mod:`learned.config` -- the options;
- :mod:`learned.train` -- the training loop; :mod:`learned.export` and :mod:`learned.norms` --
  the really smaller model; :mod:`learned.method` -- ``compresso`` and its registration as
  ``depprune prune --method compresso``.

This package sits after ``recovery`` on the data path: it imports ``pruners`` (public API) and
``recovery``; neither imports it.
"""

from .config import DEFAULT_PROMPT, CompressoConfig, ConstraintOptions, GateOptions, PromptOptions
from .method import compresso, training_data
from .prompt import prompt_ids

__all__ = [
    "DEFAULT_PROMPT", "CompressoConfig", "ConstraintOptions", "GateOptions", "PromptOptions", "compresso", "prompt_ids",
    "training_data",
]
