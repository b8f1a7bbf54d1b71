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


LayerBound = int | float


class PlannerConfig(BaseModel):
    """How much to prune and where."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(..., gt=0.0, lt=1.0, description="fraction of the model's parameters to remove, in (0, 1)")
    kinds: list[KindName] = Field(
        default_factory=lambda: ["attention", "mlp_channel"],
        description="group kinds to prune; 'attention' means whole KV groups under GQA and heads otherwise",
    )
    strategy: Literal["uniform", "global"] = Field(
        "uniform",
        description="uniform: every planned group loses the same fraction of units; "
        "global: the lowest scores across layers go first (scores normalised by each group's mean)",
    )
    layers: tuple[LayerBound, LayerBound] | None = Field(
        None,
        description="layers to prune, [start, end): integers are indices (negative counts from the end), "
        "floats in [0, 1] are fractions of the depth; LLM-Pruner's 'keep the first 4 and last 2' is [4, -2]",
    )
    min_units: int = Field(1, ge=1, description="units every pruned group keeps at least")
    round_to: int = Field(1, ge=1, description="round each group's kept units to a multiple of this (hardware-friendly)")

    @field_validator("kinds")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one kind is required")
        if "query_head" in v and ("kv_group" in v or "attention" in v):
            raise ValueError("prune either whole KV groups ('attention'/'kv_group') or query heads within them, not both")
        return list(dict.fromkeys(v))

    @field_validator("layers")
    @classmethod
    def _fractions_in_range(cls, v):
        if v is not None:
            for b in v:
                if isinstance(b, float) and not 0.0 <= b <= 1.0:
                    raise ValueError(f"a fractional layer bound must be in [0, 1], got {b}")
        return v


def resolve_layers(bounds: tuple[LayerBound, LayerBound] | None, n_layers: int) -> set[int]:
    """Layer indices in ``[start, end)``; ints are indices (negative from the end), floats fractions.

    >>> sorted(resolve_layers((4, -2), 32))[:2], max(resolve_layers((4, -2), 32))
    ([4, 5], 29)
    >>> sorted(resolve_layers((0.5, 1.0), 8))
    [4, 5, 6, 7]
    """
    if bounds is None:
        return set(range(n_layers))

    def idx(b: LayerBound) -> int:
        if isinstance(b, float):
            return int(round(b * n_layers))
        return b + n_layers if b < 0 else b

    start, end = (max(0, min(n_layers, idx(b))) for b in bounds)
    if start >= end:
        raise PlanError(f"layer range {list(bounds)} selects no layer of {n_layers}")
    return set(range(start, end))


@dataclass
class Plan:
    keep: dict[str, list[int]]
    group_ratio: float
    params_removed: int
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)


def select_groups(groups: Sequence[Group], kinds: Sequence[str], layers: tuple | None = None) -> list[Group]:
    """The groups a plan touches; ``attention`` resolves per layer to KV groups, else heads.

    ``layers`` limits per-layer groups to a range; model-wide groups (hidden channels) stay.
    """
    layers_with_kv = {g.layer for g in groups if g.kind == "kv_group"}
    depth = 1 + max((g.layer for g in groups if g.layer is not None), default=-1)
    allowed = resolve_layers(layers, depth) if layers is not None and depth else None
    out = []
    for g in groups:
        if allowed is not None and g.layer is not None and g.layer not in allowed:
            continue
        if g.kind in kinds:
            out.append(g)
        elif "attention" in kinds and (
            g.kind == "kv_group" or (g.kind == "attention_head" and g.layer not in layers_with_kv)
        ):
            out.append(g)
    return out


def _round_kept(kept: int, n: int, round_to: int) -> int:
    """Kept units rounded to a multiple of ``round_to`` (when the group is that big)."""
    if round_to <= 1 or n < round_to:
        return kept
    return min(n, max(round_to, int(round(kept / round_to)) * round_to))


def _removed_units(g: Group, rho: float, round_to: int = 1) -> int:
    if g.kind == "query_head" and g.units_per_block:
        return int(round(rho * g.units_per_block)) * (g.n_units // g.units_per_block)
    return g.n_units - _round_kept(g.n_units - int(round(rho * g.n_units)), g.n_units, round_to)


def _removed_params(groups: Sequence[Group], rho: float, round_to: int = 1) -> int:
    return sum(_removed_units(g, rho, round_to) * g.unit_params for g in groups)


def _too_much(g: Group, rho: float, min_units: int, round_to: int = 1) -> bool:
    if g.kind == "query_head" and g.units_per_block:
        return g.units_per_block - int(round(rho * g.units_per_block)) < min_units
    return g.n_units - _removed_units(g, rho, round_to) < min_units


def solve_ratio(groups: Sequence[Group], target: int, round_to: int = 1) -> float:
    """The uniform unit fraction whose rounded removals come closest to ``target`` parameters."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _removed_params(groups, mid, round_to) >= target:
            hi = mid
        else:
            lo = mid
    return min((lo, hi), key=lambda r: (abs(_removed_params(groups, r, round_to) - target), r))


def _chosen(groups: Sequence[Group], config: PlannerConfig, total_params: int) -> tuple[list[Group], int]:
    chosen = select_groups(groups, config.kinds, config.layers)
    if not chosen:
        kinds = sorted({g.kind for g in groups})
        raise PlanError(f"the model has no groups of kinds {config.kinds} in the chosen layers; it has {kinds}")
    target = int(round(config.ratio * total_params))
    capacity = sum(g.unit_params * g.n_units for g in chosen)
    if target >= capacity:
        raise PlanError(
            f"ratio {config.ratio} asks to remove {target} parameters but kinds {config.kinds} hold only "
            f"{capacity} ({capacity / total_params:.1%} of the model); lower --ratio or add --kinds"
        )
    return chosen, target


def _lowest(g: Group, s: np.ndarray, n_remove: int) -> list[int]:
    """Kept units after removing the ``n_remove`` lowest scores (per KV group for query heads)."""
    if g.kind == "query_head" and g.units_per_block:
        per = g.units_per_block
        drop = n_remove // (g.n_units // per)
        kept = []
        for b in range(g.n_units // per):
            block = np.arange(b * per, (b + 1) * per)
            kept.extend(block[np.argsort(s[block], kind="stable")][drop:].tolist())
        return sorted(kept)
    return sorted(np.argsort(s, kind="stable")[n_remove:].tolist())


def _finish(chosen: Sequence[Group], keep: dict[str, list[int]], group_ratio: float) -> Plan:
    by_kind: dict[str, dict[str, int]] = {}
    removed_total = 0
    for g in chosen:
        if g.id not in keep:
            continue
        removed = (g.n_units - len(keep[g.id])) * g.unit_params
        removed_total += removed
        stats = by_kind.setdefault(g.kind, {"units": 0, "removed_units": 0, "removed_params": 0})
        stats["units"] += g.n_units
        stats["removed_units"] += g.n_units - len(keep[g.id])
        stats["removed_params"] += removed
    return Plan(keep=keep, group_ratio=group_ratio, params_removed=removed_total, by_kind=by_kind)


def plan_uniform(
    groups: Sequence[Group], scores: Mapping[str, np.ndarray], config: PlannerConfig, total_params: int
) -> Plan:
    """Every planned group loses the same fraction of its units; the fraction hits ``config.ratio``."""
    chosen, target = _chosen(groups, config, total_params)
    rho = solve_ratio(chosen, target, config.round_to)
    for g in chosen:
        if _too_much(g, rho, config.min_units, config.round_to):
            where = f"layer {g.layer}" if g.layer is not None else "the model"
            raise PlanError(
                f"ratio {config.ratio} would remove every {g.kind} unit of {where} "
                f"({g.n_units} units, group ratio {rho:.3f}); lower --ratio or prune other --kinds"
            )
    keep = {}
    for g in chosen:
        k = _removed_units(g, rho, config.round_to)
        if k:
            keep[g.id] = _lowest(g, np.asarray(scores[g.id], dtype=np.float64), k)
    return _finish(chosen, keep, rho)


def plan_global(
    groups: Sequence[Group], scores: Mapping[str, np.ndarray], config: PlannerConfig, total_params: int
) -> Plan:
    """Remove the lowest normalised scores across all planned groups until ``config.ratio`` is reached.

    Each group's scores are divided by their mean, so layers with larger raw scores do not
    shield all their units.  Query heads leave in steps of one head per KV group; every group
    keeps ``min_units``; ``round_to`` then rounds each group's kept count.
    """
    chosen, target = _chosen(groups, config, total_params)
    steps = []  # (normalised score, order, group, units removed by this step)
    for gi, g in enumerate(chosen):
        s = np.asarray(scores[g.id], dtype=np.float64)
        norm = s / (np.abs(s).mean() + 1e-30)
        if g.kind == "query_head" and g.units_per_block:
            per, blocks = g.units_per_block, g.n_units // g.units_per_block
            ranked = [np.arange(b * per, (b + 1) * per)[np.argsort(s[b * per : (b + 1) * per], kind="stable")] for b in range(blocks)]
            for i in range(per - config.min_units):
                units = [int(r[i]) for r in ranked]
                steps.append((float(norm[units].mean()), gi, i, g, units))
        else:
            order = np.argsort(s, kind="stable")
            for i, u in enumerate(order[: g.n_units - config.min_units]):
                steps.append((float(norm[u]), gi, i, g, [int(u)]))
    steps.sort(key=lambda t: (t[0], t[1], t[2]))
    removed: dict[str, list[int]] = {}
    total = 0
    for score, _, _, g, units in steps:
        if total >= target:
            break
        nxt = total + len(units) * g.unit_params
        if abs(nxt - target) > abs(total - target) and total > 0:
            break  # one more unit overshoots by more than stopping short
        removed.setdefault(g.id, []).extend(units)
        total = nxt
    if total < target * 0.999:
        raise PlanError(
            f"ratio {config.ratio} cannot be reached while every group keeps {config.min_units} unit(s); lower --ratio"
        )
    keep = {}
    for g in chosen:
        if g.id not in removed:
            continue
        s = np.asarray(scores[g.id], dtype=np.float64)
        n_remove = len(removed[g.id])
        if not (g.kind == "query_head" and g.units_per_block):
            n_remove = g.n_units - _round_kept(g.n_units - n_remove, g.n_units, config.round_to)
        if n_remove:
            keep[g.id] = _lowest(g, s, n_remove)
    units = sum(g.n_units for g in chosen)
    return _finish(chosen, keep, sum(g.n_units - len(keep.get(g.id, range(g.n_units))) for g in chosen) / units)


STRATEGIES = {"uniform": plan_uniform, "global": plan_global}


def make_plan(groups: Sequence[Group], scores: Mapping[str, np.ndarray], config: PlannerConfig, total_params: int) -> Plan:
    """Kept units per group, by ``config.strategy``."""
    return STRATEGIES[config.strategy](groups, scores, config, total_params)
