"""The planner: turn a pruning target and unit scores into kept units per group.

The target is either a fraction of the model's **parameters** to remove (``ratio``) or an
explicit fraction of **units** per kind (``kind_ratios``, LLM-Pruner's per-layer ratio).  Under
``ratio`` the default uniform strategy gives every planned group the same fraction of its units
(rounded per group), solved so the parameters removed match the target as closely as rounding
allows; under ``kind_ratios`` every planned group of a kind loses that kind's fraction.  The
lowest-scoring units go; ties are broken by unit index, so plans are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from depgraph.groups import Group

from .config import LayerBound, PlannerConfig
from .errors import PlanError


def resolve_layers(bounds: tuple[LayerBound, LayerBound] | None, n_layers: int) -> set[int]:
    """Layer indices in ``[start, end)``; ints are indices (negative from the end), floats fractions.

    >>> sorted(resolve_layers((4, -2), 32))[:2], max(resolve_layers((4, -2), 32))
    ([4, 5], 29)
    >>> sorted(resolve_layers((0.5, 1.0), 8))
    [4, 5, 6, 7]
    >>> resolve_layers((-100, -2), 8)
    Traceback (most recent call last):
    ...
    pruners.errors.PlanError: layer bound -100 is out of range for a model with 8 layers: use an index in -8..8 or a fraction in [0, 1]
    """
    if bounds is None:
        return set(range(n_layers))

    def idx(b: LayerBound) -> int:
        if isinstance(b, float):
            return round(b * n_layers)
        if not -n_layers <= b <= n_layers:
            raise PlanError(
                f"layer bound {b} is out of range for a model with {n_layers} layers: "
                f"use an index in {-n_layers}..{n_layers} or a fraction in [0, 1]"
            )
        return b + n_layers if b < 0 else b

    start, end = (idx(b) for b in bounds)
    if start >= end:
        raise PlanError(f"layer range {list(bounds)} selects no layer of {n_layers}")
    return set(range(start, end))


@dataclass
class Plan:
    """Kept units per pruned group; ``group_ratio`` is the fraction of the planned groups' units removed
    (under ``ratio`` with the uniform strategy: the one fraction every group loses)."""

    keep: dict[str, list[int]]
    group_ratio: float
    params_removed: int
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)


def planned_groups(
    groups: Sequence[Group], kinds: Sequence[str], layers: tuple | None = None
) -> list[tuple[Group, str]]:
    """The groups a plan touches, each with the entry of ``kinds`` it is planned under.

    ``attention`` resolves per layer to KV groups, else heads; a kind named exactly wins over it.
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
            out.append((g, g.kind))
        elif "attention" in kinds and (
            g.kind == "kv_group" or (g.kind == "attention_head" and g.layer not in layers_with_kv)
        ):
            out.append((g, "attention"))
    return out


def select_groups(groups: Sequence[Group], kinds: Sequence[str], layers: tuple | None = None) -> list[Group]:
    """The groups a plan touches (see :func:`planned_groups`)."""
    return [g for g, _ in planned_groups(groups, kinds, layers)]


def _round_kept(kept: int, n: int, round_to: int, at_least: int = 1) -> int:
    """Kept units rounded to a multiple of ``round_to`` (when the group is that big), never below ``at_least``.

    >>> _round_kept(13, 64, 8), _round_kept(5, 64, 4), _round_kept(5, 64, 4, at_least=5)
    (16, 4, 8)
    """
    if round_to <= 1 or n < round_to:
        return kept
    rounded = min(n, max(round_to, round(kept / round_to) * round_to))
    return rounded if rounded >= at_least else min(n, -(-at_least // round_to) * round_to)


def _removed_units(g: Group, rho: float, round_to: int = 1) -> int:
    if g.kind == "query_head" and g.units_per_block:
        return round(rho * g.units_per_block) * (g.n_units // g.units_per_block)
    return g.n_units - _round_kept(g.n_units - round(rho * g.n_units), g.n_units, round_to)


def _removed_params(groups: Sequence[Group], rho: float, round_to: int = 1) -> int:
    return sum(_removed_units(g, rho, round_to) * g.unit_params for g in groups)


def _too_much(g: Group, rho: float, min_units: int, round_to: int = 1) -> bool:
    if g.kind == "query_head" and g.units_per_block:
        return g.units_per_block - round(rho * g.units_per_block) < min_units
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


def _asked(config: PlannerConfig, kind: str | None = None) -> tuple[str, str]:
    """The target as given (the whole ``ratio``, or one kind's ratio) and the flag that lowers it."""
    if kind is None:
        return f"ratio {config.ratio}", "--ratio"
    return f"kind ratio {kind}={config.kind_ratios[kind]}", f"--kind-ratio {kind}"


def _planned(groups: Sequence[Group], config: PlannerConfig) -> list[tuple[Group, str]]:
    """:func:`planned_groups` of ``config``; refuses kinds the model lacks (any, with ``kind_ratios``)."""
    pairs = planned_groups(groups, config.kinds, config.layers)
    found = {kind for _, kind in pairs}
    if config.kind_ratios:
        missing = [k for k in config.kinds if k not in found]
    else:
        missing = [] if pairs else list(config.kinds)
    if missing:
        kinds = sorted({g.kind for g in groups})
        raise PlanError(f"the model has no groups of kinds {missing} in the chosen layers; it has {kinds}")
    largest = max(g.n_units for g, _ in pairs)
    if config.round_to > largest:  # rounding applies to groups at least round_to big: here to none
        raise PlanError(
            f"--round-to {config.round_to} is larger than every planned group (the largest has {largest} units), "
            f"so it would round nothing; use at most {largest}"
        )
    return pairs


def _chosen(groups: Sequence[Group], config: PlannerConfig, total_params: int) -> tuple[list[Group], int]:
    """The planned groups and the parameters ``config.ratio`` asks to remove from them."""
    chosen = [g for g, _ in _planned(groups, config)]
    target = round(config.ratio * total_params)
    if target == 0:
        raise PlanError(f"ratio {config.ratio} of {total_params} parameters removes none; give a larger --ratio")
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


def _finish(chosen: Sequence[Group], keep: dict[str, list[int]], group_ratio: float | None = None) -> Plan:
    """The plan with its totals; ``group_ratio`` defaults to the fraction of ``chosen``'s units removed."""
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
    if group_ratio is None:
        units = sum(g.n_units for g in chosen)
        group_ratio = sum(g.n_units - len(keep.get(g.id, range(g.n_units))) for g in chosen) / units
    return Plan(keep=keep, group_ratio=group_ratio, params_removed=removed_total, by_kind=by_kind)


def _uniform_ratios(
    groups: Sequence[Group], config: PlannerConfig, total_params: int
) -> list[tuple[Group, float, str | None]]:
    """Each planned group, the fraction of its units to remove, and its ``kind_ratios`` key (None under ``ratio``)."""
    if config.kind_ratios is None:
        chosen, target = _chosen(groups, config, total_params)
        rho = solve_ratio(chosen, target, config.round_to)
        return [(g, rho, None) for g in chosen]
    return [(g, config.kind_ratios[kind], kind) for g, kind in _planned(groups, config)]


def plan_uniform(
    groups: Sequence[Group], scores: Mapping[str, np.ndarray], config: PlannerConfig, total_params: int
) -> Plan:
    """Every planned group loses the same fraction of its units: the one hitting ``config.ratio``, or its kind's
    ``config.kind_ratios`` entry (query heads: that fraction of each KV group's heads)."""
    planned = _uniform_ratios(groups, config, total_params)
    for g, rho, kind in planned:
        if _too_much(g, rho, config.min_units, config.round_to):
            asked, flag = _asked(config, kind)
            where = f"layer {g.layer}" if g.layer is not None else "the model"
            what = (
                f"remove every {g.kind} unit of {where}" if config.min_units == 1
                else f"leave fewer than --min-units {config.min_units} {g.kind} units in {where}"
            )
            hint = f"lower {flag}" + (" or prune other --kinds" if kind is None else "")
            raise PlanError(f"{asked} would {what} ({g.n_units} units, group ratio {rho:.3f}); {hint}")
    keep = {}
    for g, rho, _ in planned:
        k = _removed_units(g, rho, config.round_to)
        if k:
            keep[g.id] = _lowest(g, np.asarray(scores[g.id], dtype=np.float64), k)
    chosen = [g for g, _, _ in planned]
    return _finish(chosen, keep, planned[0][1] if config.kind_ratios is None else None)


def _global_steps(chosen: Sequence[Group], scores: Mapping[str, np.ndarray], min_units: int) -> list[tuple]:
    """Removal steps ``(normalised score, group order, rank, group, units)``, lowest first.

    Each group's scores are divided by their mean; a query-head step takes one head per KV group.
    No step takes a group below ``min_units``.
    """
    steps = []
    for gi, g in enumerate(chosen):
        s = np.asarray(scores[g.id], dtype=np.float64)
        norm = s / (np.abs(s).mean() + 1e-30)
        if g.kind == "query_head" and g.units_per_block:
            per, blocks = g.units_per_block, g.n_units // g.units_per_block
            ranked = [np.arange(b * per, (b + 1) * per)[np.argsort(s[b * per : (b + 1) * per], kind="stable")] for b in range(blocks)]
            for i in range(per - min_units):
                units = [int(r[i]) for r in ranked]
                steps.append((float(norm[units].mean()), gi, i, g, units))
        else:
            order = np.argsort(s, kind="stable")
            for i, u in enumerate(order[: g.n_units - min_units]):
                steps.append((float(norm[u]), gi, i, g, [int(u)]))
    steps.sort(key=lambda t: (t[0], t[1], t[2]))
    return steps


def _global_removed(
    chosen: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    config: PlannerConfig,
    target: int,
    cost: Callable[[Group, int], int],
    kind: str | None = None,
) -> dict[str, list[int]]:
    """Units to remove per group: the lowest steps until their ``cost(group, n_units)`` sums to ``target``.

    Stops short when one more step would overshoot by more than stopping does; raises when the
    steps run out first.
    """
    removed: dict[str, list[int]] = {}
    total = 0
    for *_, g, units in _global_steps(chosen, scores, config.min_units):
        if total >= target:
            break
        nxt = total + cost(g, len(units))
        if abs(nxt - target) > abs(total - target) and total > 0:
            break  # one more step overshoots by more than stopping short
        removed.setdefault(g.id, []).extend(units)
        total = nxt
    else:
        if total < target * 0.999:
            asked, flag = _asked(config, kind)
            raise PlanError(f"{asked} cannot be reached while every group keeps {config.min_units} unit(s); lower {flag}")
    return removed


def plan_global(
    groups: Sequence[Group], scores: Mapping[str, np.ndarray], config: PlannerConfig, total_params: int
) -> Plan:
    """Remove the lowest normalised scores across layers until ``config.ratio`` of the parameters is reached,
    or, per kind, until ``config.kind_ratios[kind]`` of that kind's planned units is.

    Each group's scores are divided by their mean, so layers with larger raw scores do not
    shield all their units.  Query heads leave in steps of one head per KV group; every group
    keeps ``min_units``; ``round_to`` then rounds each group's kept count.
    """
    if config.kind_ratios is None:
        chosen, target = _chosen(groups, config, total_params)
        removed = _global_removed(chosen, scores, config, target, lambda g, n: n * g.unit_params)
    else:
        pairs = _planned(groups, config)
        chosen, removed = [g for g, _ in pairs], {}
        for kind, r in config.kind_ratios.items():
            of_kind = [g for g, k in pairs if k == kind]
            target = round(r * sum(g.n_units for g in of_kind))
            removed |= _global_removed(of_kind, scores, config, target, lambda g, n: n, kind)
    return _finish(chosen, _rounded_keep(chosen, removed, scores, config))


def _rounded_keep(
    chosen: Sequence[Group], removed: Mapping[str, list[int]], scores: Mapping[str, np.ndarray], config: PlannerConfig
) -> dict[str, list[int]]:
    """Kept units per group once each group's kept count is rounded to ``config.round_to`` (not below ``min_units``)."""
    keep = {}
    for g in chosen:
        n_remove = len(removed.get(g.id, ()))
        if n_remove and not (g.kind == "query_head" and g.units_per_block):
            n_remove = g.n_units - _round_kept(g.n_units - n_remove, g.n_units, config.round_to, config.min_units)
        if n_remove:
            keep[g.id] = _lowest(g, np.asarray(scores[g.id], dtype=np.float64), n_remove)
    return keep


STRATEGIES = {"uniform": plan_uniform, "global": plan_global}


def make_plan(groups: Sequence[Group], scores: Mapping[str, np.ndarray], config: PlannerConfig, total_params: int) -> Plan:
    """Kept units per group, by ``config.strategy``."""
    return STRATEGIES[config.strategy](groups, scores, config, total_params)
