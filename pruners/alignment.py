"""Aligned mode (``--align N``): which head counts a model's own config can say, and why a plan it cannot is refused.

An aligned output keeps every layer alike and loads without remote code, so its sizes must be
ones the architecture's config expresses: channels are rounded by the planner; heads may only
take counts the config accepts (:func:`accepted_head_counts`), and only where the config stores
a head size of its own (:func:`own_head_dim`) -- elsewhere fewer heads would mean another head
size.  After slicing, a pruned model whose sizes still need generated code is refused
(:func:`unaligned` says why).
"""

from __future__ import annotations

import copy

from torch import nn

from depgraph.groups import Group

from .config import PlannerConfig


def unaligned(model: nn.Module, config: PlannerConfig) -> str:
    """Why an ``align`` plan is refused: its sizes need remote code; with the head counts the config accepts."""
    cfg = getattr(model, "config", None)
    what = f"the {cfg.model_type} config" if hasattr(cfg, "model_type") else "the model's config"
    # fewer heads of the same size: only where the config has a head_dim of its own (else heads set the head size)
    accepted = accepted_head_counts(cfg) if own_head_dim(cfg) else []
    heads = (
        f"; the config accepts {accepted} attention heads (of {cfg.num_attention_heads})"
        if accepted and len(accepted) < cfg.num_attention_heads else ""
    )
    return (
        f"--align {config.align}: no change of {what}'s size fields rebuilds the pruned model, so it would need "
        f"generated modeling code (trust_remote_code){heads}; leave out the --kinds whose sizes it cannot say, "
        "or drop --align to write per-layer sizes"
    )


def aligned_head_counts(groups: list[Group], model: nn.Module) -> dict[str, frozenset]:
    """Under ``align``: the kept units each head group may end with, so the config can say the head count.

    From :func:`accepted_head_counts` where the config has a ``head_dim`` of its own; without one
    the head count sets the head size, so heads are kept (``{n_units}``), as are query heads
    alone (a KV group's query heads cannot change apart from the config's ratio of the two).
    """
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    if type(heads) is not int:
        return {}
    accepted = set(accepted_head_counts(cfg)) if own_head_dim(cfg) else {heads}
    out = {}
    for g in groups:
        if g.kind == "kv_group" and heads % g.n_units == 0:
            per = heads // g.n_units  # query heads per KV group
            out[g.id] = frozenset(k for k in range(1, g.n_units + 1) if k * per in accepted) or frozenset({g.n_units})
        elif g.kind == "attention_head":
            out[g.id] = frozenset(k for k in accepted if k <= g.n_units) or frozenset({g.n_units})
        elif g.kind in ("query_head", "kv_group"):
            out[g.id] = frozenset({g.n_units})
    return out


def own_head_dim(config) -> bool:
    """Whether the config stores a head size of its own (Llama's ``head_dim``), not one derived from
    the head count (Falcon's ``head_dim`` property is ``hidden_size // num_attention_heads``).

    >>> from transformers import FalconConfig, LlamaConfig
    >>> own_head_dim(LlamaConfig()), own_head_dim(FalconConfig())
    (True, False)
    """
    return isinstance(vars(config).get("head_dim"), int)


def accepted_head_counts(config) -> list[int]:
    """Head counts ``h`` whose config (``num_attention_heads = h``, KV heads in proportion) passes
    transformers' validation; [] when the config has no head count or validates nothing.

    >>> from transformers import LlamaConfig
    >>> accepted_head_counts(LlamaConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, head_dim=8))
    [2, 4, 8]
    """
    heads = getattr(config, "num_attention_heads", None)
    if type(heads) is not int or not hasattr(config, "validate"):
        return []
    kv = getattr(config, "num_key_value_heads", None)
    out = []
    for h in range(1, heads + 1):
        trial = copy.deepcopy(config)
        try:
            trial.num_attention_heads = h
            if type(kv) is int:
                if (h * kv) % heads:
                    continue
                trial.num_key_value_heads = h * kv // heads
            trial.validate()
        except Exception:
            continue
        out.append(h)
    return out
