"""Per-layer sizes in transformers' standard schema: ``per_layer_config`` overrides of the config's own fields.

When layers keep different numbers of heads or channels, no single config describes the pruned
model, but each decoder layer may still be an ordinary layer of its architecture built from the
config with a few fields changed: ``{"1": {"num_attention_heads": 2, "num_key_value_heads": 1,
"intermediate_size": 268}}`` (``config.per_layer_config[i]`` in transformers >= 5.16; vLLM sizes
its KV cache per layer from it).  As for the global config (:mod:`.hf_config`), the fields are
found without knowing their names: top-level int fields whose value is an old pruned size of
the layer are candidates, fewest changes first, with an explicit ``head_dim`` where the config
has none; a candidate must build the layer with exactly the pruned tensor shapes and exactly
the pruned module attributes (head counts, head size, group sizes).  When some layer has no
such fields the answer is ``None``: the record alone describes the model.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping

import torch
from torch import nn

from depgraph.layout import Factor
from depgraph.tracer import Trace

from .hf_config import config_candidates, config_changes, with_changes


def head_dim_pins(config) -> list[dict[str, int]]:
    """Global fields to try the layers with: none, then an explicit ``head_dim`` where the config has none.

    Many architectures (Qwen2, Phi-3, Phi) size a head as ``getattr(config, "head_dim",
    hidden_size // num_attention_heads)``: written out, the head size no longer depends on the
    head count, so a layer with fewer heads still has heads of the old size.  Only for per-layer
    outputs (generated code): a plain Qwen2 config with an added ``head_dim`` loads in
    transformers, but vLLM's own Qwen2 derives the head size from the head count.

    >>> from transformers import LlamaConfig, Qwen2Config
    >>> head_dim_pins(Qwen2Config(hidden_size=48, num_attention_heads=6))
    [{}, {'head_dim': 8}]
    >>> head_dim_pins(LlamaConfig(hidden_size=48, num_attention_heads=6))  # it has one already
    [{}]
    """
    if isinstance(getattr(config, "head_dim", None), int):
        return [{}]
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if type(hidden) is not int or type(heads) is not int or heads <= 0 or hidden % heads:
        return [{}]
    return [{}, {"head_dim": hidden // heads}]


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's decoder layers: the first ``ModuleList`` of ``num_hidden_layers`` modules of one class, and its path."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and n and len({type(m) for m in mod}) == 1:
            return path, mod
    return None


def build_layer(cls: type, config, index: int) -> nn.Module:
    """``cls(config, layer_idx=index)`` (or ``cls(config)`` for a layer class without a layer index), on meta."""
    params = inspect.signature(cls.__init__).parameters
    with torch.device("meta"):
        return cls(config, layer_idx=index) if "layer_idx" in params else cls(config)


def _sizes(layer: nn.Module) -> tuple[dict, dict]:
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    attrs = {
        (path, k): v
        for path, mod in layer.named_modules()
        for k, v in vars(mod).items()
        if not k.startswith("_") and k != "layer_idx" and (type(v) is int or isinstance(v, tuple))
    }
    return shapes, attrs


def per_layer_update(pruned: nn.Module, tr: Trace, new_size: Mapping[Factor, int], max_builds: int = 512) -> dict | None:
    """``{"global": fields, "layers": {"i": fields}}`` that rebuild every pruned decoder layer, or ``None``.

    ``global`` holds what every layer needs (an explicit ``head_dim``); ``layers`` the changed
    fields of the layers that differ from the source config (keys zero-padded, as transformers
    writes them).  At most ``max_builds`` layers are built (on meta) per layer; the fields the
    previous layer needed are tried first, so alike layers cost one build each.
    """
    config = getattr(pruned, "config", None)
    found = decoder_layers(pruned)
    if config is None or found is None or not hasattr(config, "to_dict"):
        return None
    path, layers = found
    prefix = f"{path}." if path else ""
    for pin in head_dim_pins(config):
        try:
            base = with_changes(config, pin)
        except Exception:  # a head_dim the config cannot take
            continue
        out: dict[str, dict[str, int]] = {}
        last: tuple[str, ...] = ()
        for i, layer in enumerate(layers):
            changes = _layer_changes(base, tr, new_size, layer, i, f"{prefix}{i}.", max_builds, last)
            if changes is None:
                break
            if changes:
                out[str(i).zfill(len(str(len(layers) - 1)))] = changes
                last = tuple(sorted(changes))
        else:
            return {"global": dict(pin), "layers": out} if out else None
    return None


def _layer_changes(
    base, tr: Trace, new_size, layer: nn.Module, index: int, prefix: str, max_builds: int, first: tuple[str, ...] = ()
) -> dict | None:
    """The fewest field changes of ``base`` that build ``layer`` exactly ({} when it is unchanged), or None.

    Changes of the fields ``first`` (the previous layer's) are tried before the others.
    """
    target = _sizes(layer)
    cands = config_candidates(base, tr, new_size, prefix)
    likely = {f: cands[f] for f in first if f in cands} if all(f in cands for f in first) else {}
    tried = itertools.chain(
        [{}], (dict(zip(likely, values)) for values in itertools.product(*likely.values())), config_changes(cands)
    )
    for builds, changes in enumerate(tried):
        if builds > max_builds:
            return None
        try:
            built = build_layer(type(layer), with_changes(base, changes), index)
        except Exception:  # an invalid combination is simply not it
            continue
        if _sizes(built) == target:
            return changes
    return None
