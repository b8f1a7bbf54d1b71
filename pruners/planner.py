"""The planner: turn a parameter-reduction target and unit scores into kept units per group.

The target is a fraction of the model's **parameters** to remove.  By default it is spread
uniformly: every planned group loses the same fraction of its units (rounded per group),
with the fraction solved so the parameters removed match the target as closely as rounding
allows.  The lowest-scoring units go; ties are broken by unit index, so plans are
deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from depgraph.groups import Group

from .executor import PlanError

KindName = Literal["attention", "attention_head", "kv_group", "query_head", "mlp_channel", "hidden_channel"]


class PlannerConfig(BaseModel):
    """How much to prune and where."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(..., gt=0.0, lt=1.0, description="fraction of the model's parameters to remove, in (0, 1)")
    kinds: list[KindName] = Field(
        default_factory=lambda: ["attention", "mlp_channel"],
        description="group kinds to prune; 'attention' means whole KV groups under GQA and heads otherwise",
    )
    min_units: int = Field(1, ge=1, description="units every pruned group keeps at least")

    @field_validator("kinds")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one kind is required")
        if "query_head" in v and ("kv_group" in v or "attention" in v):
            raise ValueError("prune either whole KV groups ('attention'/'kv_group') or query heads within them, not both")
        return list(dict.fromkeys(v))


@dataclass
class Plan:
    keep: dict[str, list[int]]
    group_ratio: float
    params_removed: int
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)


def select_groups(groups: Sequence[Group], kinds: Sequence[str]) -> list[Group]:
    """The groups a plan touches; ``attention`` resolves per layer to KV groups, else heads."""
    layers_with_kv = {g.layer for g in groups if g.kind == "kv_group"}
    out = []
    for g in groups:
        if g.kind in kinds:
            out.append(g)
        elif "attention" in kinds and (
            g.kind == "kv_group" or (g.kind == "attention_head" and g.layer not in layers_with_kv)
        ):
            out.append(g)
    return out


def _removed_units(g: Group, rho: float) -> int:
    if g.kind == "query_head" and g.units_per_block:
        return int(round(rho * g.units_per_block)) * (g.n_units // g.units_per_block)
    return int(round(rho * g.n_units))


def _removed_params(groups: Sequence[Group], rho: float) -> int:
    return sum(_removed_units(g, rho) * g.unit_params for g in groups)


def _too_much(g: Group, rho: float, min_units: int) -> bool:
    if g.kind == "query_head" and g.units_per_block:
        return g.units_per_block - int(round(rho * g.units_per_block)) < min_units
    return g.n_units - _removed_units(g, rho) < min_units


def solve_ratio(groups: Sequence[Group], target: int) -> float:
    """The uniform unit fraction whose rounded removals come closest to ``target`` parameters."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _removed_params(groups, mid) >= target:
            hi = mid
        else:
            lo = mid
    return min((lo, hi), key=lambda r: (abs(_removed_params(groups, r) - target), r))


def plan_uniform(
    groups: Sequence[Group], scores: Mapping[str, np.ndarray], config: PlannerConfig, total_params: int
) -> Plan:
    """Uniform per-group ratio hitting ``config.ratio`` of ``total_params``."""
    chosen = select_groups(groups, config.kinds)
    if not chosen:
        kinds = sorted({g.kind for g in groups})
        raise PlanError(f"the model has no groups of kinds {config.kinds}; it has {kinds}")
    target = int(round(config.ratio * total_params))
    capacity = sum(g.unit_params * g.n_units for g in chosen)
    if target >= capacity:
        raise PlanError(
            f"ratio {config.ratio} asks to remove {target} parameters but kinds {config.kinds} hold only "
            f"{capacity} ({capacity / total_params:.1%} of the model); lower --ratio or add --kinds"
        )
    rho = solve_ratio(chosen, target)
    for g in chosen:
        if _too_much(g, rho, config.min_units):
            where = f"layer {g.layer}" if g.layer is not None else "the model"
            raise PlanError(
                f"ratio {config.ratio} would remove every {g.kind} unit of {where} "
                f"({g.n_units} units, group ratio {rho:.3f}); lower --ratio or prune other --kinds"
            )
    keep: dict[str, list[int]] = {}
    by_kind: dict[str, dict[str, int]] = {}
    removed_total = 0
    for g in chosen:
        s = np.asarray(scores[g.id], dtype=np.float64)
        k = _removed_units(g, rho)
        if k == 0:
            continue
        if g.kind == "query_head" and g.units_per_block:
            per = g.units_per_block
            drop = k // (g.n_units // per)
            kept = []
            for b in range(g.n_units // per):
                block = np.arange(b * per, (b + 1) * per)
                order = block[np.argsort(s[block], kind="stable")]
                kept.extend(sorted(order[drop:].tolist()))
        else:
            order = np.argsort(s, kind="stable")
            kept = sorted(order[k:].tolist())
        keep[g.id] = kept
        removed = (g.n_units - len(kept)) * g.unit_params
        removed_total += removed
        stats = by_kind.setdefault(g.kind, {"units": 0, "removed_units": 0, "removed_params": 0})
        stats["units"] += g.n_units
        stats["removed_units"] += g.n_units - len(kept)
        stats["removed_params"] += removed
    return Plan(keep=keep, group_ratio=rho, params_removed=removed_total, by_kind=by_kind)
