"""Pruning methods: how a pruned model is made from a model and a :class:`~pruners.config.PruneConfig`, by name.

``one-shot`` (built in, :func:`pruners.pipeline.prune`) scores, plans and slices in one pass.
Another method -- a training-based pruner that learns gates, say -- is a function with the same
signature, registered with :func:`register_method`; a package advertises the module that
registers it under the ``depprune.methods`` entry-point group, and ``depprune prune --method
NAME`` runs it without depprune importing the package::

    [project.entry-points."depprune.methods"]
    learned = "my_pruner.method"

>>> sorted(METHODS)
['one-shot']
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from .pipeline import prune

# method(model, config, progress=..., analysis=..., tokenizer=..., samples=...) -> PruneResult
Method = Callable[..., object]
METHODS: dict[str, Method] = {}
GROUP = "depprune.methods"


def register_method(name: str) -> Callable[[Method], Method]:
    """Register ``method(model, config, progress=True, analysis=None, tokenizer=None, samples=None) -> PruneResult``.

    It prunes a copy of ``model`` (never the model itself) to ``config``'s target, as
    :func:`pruners.pipeline.prune` does, and returns a :class:`~pruners.pipeline.PruneResult`.
    """

    def deco(fn: Method) -> Method:
        if name in METHODS:
            raise ValueError(f"pruning method {name!r} is already registered")
        METHODS[name] = fn
        return fn

    return deco


register_method("one-shot")(prune)


def load_methods(group: str = GROUP) -> list[str]:
    """Import every module advertised under ``depprune.methods`` (their ``register_method`` calls run)."""
    loaded = []
    for ep in entry_points(group=group):
        ep.load()
        loaded.append(ep.name)
    return loaded


def check_method(name: str) -> str:
    """``name`` if it is a registered method; else a ValueError listing the registered ones."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return name
