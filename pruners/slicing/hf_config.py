"""Write the pruned sizes into the model's own config when its architecture can express them.

When every layer keeps the same number of heads and channels, the pruned model is usually an
ordinary instance of its architecture with smaller config fields (``num_key_value_heads``,
``intermediate_size``, ...).  This module finds those fields without knowing their names:
any top-level integer field whose value equals a pruned size is a candidate, with each new
size of the structures of that size; the smallest sets of changes are tried first, a candidate
config must build (on meta) a model with exactly the pruned parameter shapes, the survivor
must re-trace to the pruned layouts, and it must recompute the same non-persistent buffers.
When no config expresses the pruned model (sizes differ per layer, or the architecture ties
sizes together), the answer is ``None`` and the checkpoint keeps its depprune record only.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from depgraph.layout import Factor
from depgraph.tracer import Trace

from .attributes import quantities, relkey, sig_size, signature, verify_layouts


def config_candidates(config, tr: Trace, new_size: Mapping[Factor, int], prefix: str = "") -> dict[str, list[int]]:
    """Top-level int fields whose value is an old pruned size, with the new sizes they could take.

    A field may have several: ``hidden_size`` of a model losing hidden channels and heads is
    the residual width or ``heads * head_dim``, and only a rebuild says which.  ``prefix``
    limits the sizes to those of the parameters under it (one decoder layer).
    """
    qs = set().union(set(), *(
        quantities(t, new_size) for name, info in tr.params.items() if name.startswith(prefix) for t in info.axes
    ))
    out = {}
    for field, v in sorted(vars(config).items()):
        if type(v) is not int or v <= 1 or field.startswith("_"):
            continue
        news = sorted({n for o, n in qs if o == v and n != v})
        if news:
            out[field] = news
    return out


def with_changes(config, changes: Mapping[str, int]):
    """A deep copy of ``config`` with ``changes`` set (a field that cannot be set raises)."""
    trial = copy.deepcopy(config)
    for f, v in changes.items():
        setattr(trial, f, v)
    return trial


def config_changes(cands: Mapping[str, list[int]]) -> Iterator[dict[str, int]]:
    """Changes of the candidate fields, one value per field, fewest fields first."""
    for r in range(1, len(cands) + 1):  # an eos id equal to a head count stays put
        for fields in itertools.combinations(sorted(cands), r):
            for values in itertools.product(*(cands[f] for f in fields)):
                yield dict(zip(fields, values))


def hf_config_update(pruned: nn.Module, tr: Trace, new_size: Mapping[Factor, int], max_builds: int = 128) -> dict[str, int] | None:
    """The config field changes that rebuild ``pruned`` exactly, or ``None`` if there are none."""
    config = getattr(pruned, "config", None)
    if config is None or not hasattr(config, "to_dict") or not new_size:
        return None
    target = {n: tuple(p.shape) for n, p in pruned.named_parameters()}
    if not layers_alike(tr, target):
        return None
    expected = {name: tuple(signature(t, new_size) for t in info.axes) for name, info in tr.params.items()}
    for builds, changes in enumerate(config_changes(config_candidates(config, tr, new_size)), start=1):
        if builds > max_builds:
            return None
        try:
            trial_cfg = with_changes(config, changes)
            if hasattr(trial_cfg, "validate"):
                trial_cfg.validate()  # what save_pretrained and from_pretrained will check
            with torch.device("meta"):
                trial = type(pruned)(trial_cfg)
        except Exception:  # an invalid config (hidden % heads != 0, ...) is simply not it
            continue
        if {n: tuple(p.shape) for n, p in trial.named_parameters()} != target:
            continue
        if verify_layouts(trial.eval(), expected)[0] and buffers_match(pruned, trial_cfg):
            return changes
    return None


def layers_alike(tr: Trace, target: Mapping[str, tuple[int, ...]]) -> bool:
    """Do the parameters that were alike across layers (one name but for the index, one shape) still have one shape?

    A config's int fields size alike layers alike: when the plan made them differ (a global
    plan, layers keeping different numbers of heads), no change of those fields describes the
    pruned model, and nothing needs to be built to know it.
    """
    shapes: dict[tuple, set[tuple[int, ...]]] = {}
    for name, info in tr.params.items():
        if name in target:
            old = tuple(sig_size(signature(t, {})) for t in info.axes)
            shapes.setdefault((relkey(name), old), set()).add(target[name])
    return all(len(s) == 1 for s in shapes.values())


def buffers_match(pruned: nn.Module, config) -> bool:
    """Would ``config`` rebuild the pruned model's non-persistent buffers (computed, not saved) exactly?

    Gemma's ``embed_scale = sqrt(hidden_size)`` is one: pruning hidden channels must not change
    it, so a config with the new ``hidden_size`` does not describe the pruned model.  Checking
    means building the candidate's buffers for real; its parameters stay on the meta device, so
    a model of any size costs only its buffers.
    """
    from accelerate import init_empty_weights  # a dependency of peft
    from transformers.initialization import no_init_weights

    state = set(pruned.state_dict())
    computed = {n: b for n, b in pruned.named_buffers() if n not in state}
    if not computed:
        return True
    if any(b.device.type == "meta" for b in computed.values()):
        return False
    with no_init_weights(), init_empty_weights(include_buffers=False):
        rebuilt = dict(type(pruned)(config).named_buffers())
    return all(
        n in rebuilt and rebuilt[n].shape == b.shape and torch.equal(rebuilt[n].to(b.device), b)
        for n, b in computed.items()
    )
