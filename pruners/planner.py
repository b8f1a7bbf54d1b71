"""The planner: turn a pruning target and unit scores into kept units per group.

The target is either a fraction of the model's **parameters** to remove (``ratio``) or an
explicit fraction of **units** per kind (``kind_ratios``, LLM-Pruner's per-layer ratio).

Parameters are counted exactly (:class:`~depgraph.groups.ParamCount`): a plan's
``params_removed`` is what slicing removes, tied weights once, norm weights and biases included,
and an entry where two removed units cross (a hidden channel and an MLP channel of one
``gate_proj``) once.  Under ``ratio`` the plan lands within half a step of the target.  A
step is the largest single removal of any planned group -- one unit, one query head in every
KV group, or ``round_to`` units -- under ``global``; under ``uniform``, where groups of one kind
and size move in lockstep, one such removal in each of them (e.g. an MLP channel in every
layer).  A ratio whose target lies further than that beyond the largest reduction the kinds
can reach while every group keeps ``min_units`` is refused, naming that reduction.

- ``uniform`` (default): every planned group -- of every kind, the model-wide hidden-channel
  group included -- loses the same fraction of its units (rounded per group), as Torch-Pruning's
  uniform ratio.  The fraction is solved against the exact count; then each group may take one
  step more, in the order its rounding would grow with the fraction, skipping a step that
  overshoots by more than it closes, until the remainder is closed.  So a group's fraction
  differs from the solved one by rounding and at most one step, and groups of one kind and size
  (every layer's MLP channels) keep equal sizes, which a model config can express.  Under ``kind_ratios``
  every planned group of a kind loses that kind's fraction.
- ``global``: units leave lowest normalised score first (each group's scores divided by their
  mean), across layers and kinds, each charged its exact cost at the time it leaves; under
  ``kind_ratios``, ranked within each kind.

The lowest-scoring units of a group go first; ties are broken by unit index, so plans are
deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from depgraph.groups import Group, ParamCount

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
    """Kept units per pruned group; ``group_ratio`` is the fraction of the planned groups' units removed.

    ``params_removed`` is exact (what slicing the plan removes); ``by_kind`` gives per kind the
    planned units, the removed units and the parameters its removed units alone would remove.
    """

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


# how a group's kept units are rounded: to a multiple (an int), or to the nearest of some allowed counts
Grid = int | frozenset
Rounding = Grid | Callable[[Group], Grid]  # one for every group, or one per group
CHANNEL_KINDS = frozenset({"mlp_channel", "hidden_channel"})


def rounding(config: PlannerConfig, allowed: Mapping[str, frozenset] | None = None) -> Callable[[Group], Grid]:
    """How each group's kept units are rounded: to a multiple of ``round_to``; under ``align``, of
    ``align`` for MLP and hidden channels, and heads to the nearest of their ``allowed`` kept
    counts (group id -> counts the model's config accepts; a group not listed is not rounded).

    >>> from depgraph.groups import Group
    >>> r = rounding(PlannerConfig(ratio=0.2, align=8), {"k": frozenset({2, 4})})
    >>> r(Group("m", "mlp_channel", 0, 20, [], 1, True, ())), r(Group("k", "kv_group", 0, 8, [], 1, True, ()))
    (8, frozenset({2, 4}))
    """
    if config.align is None:
        return lambda g: config.round_to
    allowed = allowed or {}
    return lambda g: config.align if g.kind in CHANNEL_KINDS else allowed.get(g.id, 1)


def _per_group(round_to: Rounding) -> Callable[[Group], Grid]:
    return round_to if callable(round_to) else (lambda g: round_to)


def _round_kept(kept: int, n: int, round_to: int, at_least: int = 1) -> int:
    """Kept units rounded to a multiple of ``round_to`` (when the group is that big), never below ``at_least``.

    >>> _round_kept(13, 64, 8), _round_kept(5, 64, 4), _round_kept(5, 64, 4, at_least=5)
    (16, 4, 8)
    """
    if round_to <= 1 or n < round_to:
        return kept
    rounded = min(n, max(round_to, round(kept / round_to) * round_to))
    return rounded if rounded >= at_least else min(n, -(-at_least // round_to) * round_to)


def _removed_units(g: Group, rho: float, round_to: Grid = 1) -> int:
    """Units of ``g`` the fraction ``rho`` removes (rounded per group; query heads: per KV group).

    With allowed kept counts (a frozenset) the kept units are the nearest of them (ties: more kept).

    >>> from depgraph.groups import Group
    >>> g = Group("k", "kv_group", 0, 4, [], 1, True, ())
    >>> _removed_units(g, 0.25), _removed_units(g, 0.25, frozenset({1, 2, 4})), _removed_units(g, 0.7, frozenset({1, 2, 4}))
    (1, 0, 3)
    """
    if isinstance(round_to, frozenset):
        kept = g.n_units - _removed_units(g, rho)
        return g.n_units - min(round_to, key=lambda a: (abs(a - kept), -a))
    if g.blocked:
        return round(rho * g.units_per_block) * g.blocks
    return g.n_units - _round_kept(g.n_units - round(rho * g.n_units), g.n_units, round_to)


def _keeps_enough(g: Group, n_remove: int, min_units: int) -> bool:
    """Whether ``g`` keeps ``min_units`` units (query heads: per KV group) after losing ``n_remove``."""
    return (g.n_units - n_remove) // g.blocks >= min_units


def _too_much(g: Group, rho: float, min_units: int, round_to: Grid = 1) -> bool:
    return not _keeps_enough(g, _removed_units(g, rho, round_to), min_units)


def _step_sizes(g: Group, min_units: int, round_to: int = 1) -> list[int]:
    """Units each successive removal step of ``g`` takes, none leaving fewer than ``min_units``.

    A step is one unit, one query head of every KV group, or (``round_to``) down to the next
    multiple of ``round_to`` kept units.

    >>> from depgraph.groups import Group
    >>> _step_sizes(Group("m", "mlp_channel", 0, 20, [], 1, True, ()), 1, 8)
    [4, 8]
    >>> _step_sizes(Group("q", "query_head", 0, 8, [], 1, True, (), 4), 2)
    [2, 2]
    """
    if g.blocked:
        return [g.blocks] * max(0, g.units_per_block - min_units)
    n = g.n_units
    if round_to <= 1 or n < round_to:
        return [1] * max(0, n - min_units)
    kept = list(range((n - 1) // round_to * round_to, -(-min_units // round_to) * round_to - 1, -round_to))
    return [before - after for before, after in zip([n, *kept], kept)]


def _step_params(g: Group, round_to: Grid) -> int:
    """An upper bound on the parameters one removal step of ``g`` takes (see :func:`_step_sizes`);
    between allowed kept counts, the widest gap."""
    if isinstance(round_to, frozenset):
        counts = sorted(round_to | {g.n_units})
        return max([b - a for a, b in zip(counts, counts[1:])] or [0]) * g.unit_params
    units = g.blocks if g.blocked else round_to if round_to > 1 and g.n_units >= round_to else 1
    return units * g.unit_params


def _half_step(chosen: Sequence[Group], round_to: Rounding, lockstep: bool = False) -> float:
    """How far a ``ratio`` plan may land from its target: half the largest step of any planned group,
    or (``lockstep``, the uniform strategy) of all the groups of one kind and size together."""
    rt = _per_group(round_to)
    if not lockstep:
        return max(_step_params(g, rt(g)) for g in chosen) / 2
    together: dict[tuple, int] = {}
    for g in chosen:
        key = (g.kind, g.n_units, g.unit_params)
        together[key] = together.get(key, 0) + _step_params(g, rt(g))
    return max(together.values()) / 2


def _removal_order(g: Group, s: np.ndarray) -> np.ndarray:
    """The units of ``g`` in the order they go: lowest score first, ties by index.

    For query heads: the lowest of every KV group, then the second lowest of every KV group, ...,
    so the first ``k * blocks`` are ``k`` heads from each KV group.

    >>> from depgraph.groups import Group
    >>> _removal_order(Group("q", "query_head", 0, 4, [], 1, True, (), 2), np.array([2.0, 1, 0, 3])).tolist()
    [1, 2, 0, 3]
    """
    if not g.blocked:
        return np.argsort(s, kind="stable")
    per = g.units_per_block
    ranked = np.stack([b * per + np.argsort(s[b * per : (b + 1) * per], kind="stable") for b in range(g.blocks)])
    return ranked.T.reshape(-1)  # (per * blocks,): round by round across the KV groups


def _normalised(s: np.ndarray) -> np.ndarray:
    """Scores divided by their mean magnitude, so that groups of different scales compare."""
    return s / (np.abs(s).mean() + 1e-30)


def _sup(holds: Callable[[float], bool]) -> tuple[float, float]:
    """``(lo, hi)``: ``holds(lo)`` and not ``holds(hi)``, ``hi - lo`` tiny, for ``holds`` true on [0, x) and false after.

    ``(1.0, 1.0)`` when ``holds(1.0)``.
    """
    if holds(1.0):
        return 1.0, 1.0
    lo, hi = 0.0, 1.0
    for _ in range(52):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo, hi


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


def _target(config: PlannerConfig, total_params: int) -> int:
    """The parameters ``config.ratio`` asks to remove."""
    target = round(config.ratio * total_params)
    if target == 0:
        raise PlanError(f"ratio {config.ratio} of {total_params} parameters removes none; give a larger --ratio")
    return target


def _unreachable(config: PlannerConfig, target: int, most: int, total_params: int, why: str, hint: str = "") -> PlanError:
    """The refusal of a ``ratio`` whose target lies beyond the largest reachable reduction ``most``."""
    return PlanError(
        f"ratio {config.ratio} asks to remove {target} parameters, which cannot be reached: kinds {config.kinds} "
        f"can remove at most {most} ({most / total_params:.1%} of the model) {why}; lower --ratio{hint} or add --kinds"
    )


def _finish(chosen: Sequence[Group], keep: dict[str, list[int]], count: ParamCount) -> Plan:
    """The plan with its totals, counted exactly by ``count`` (a :class:`ParamCount` of ``chosen``).

    ``by_kind[kind]["removed_params"]`` counts that kind's units alone: an entry where a removed
    hidden channel crosses a removed MLP channel is in both kinds' figures, once in ``params_removed``.
    """
    removed = {g.id: sorted(set(range(g.n_units)) - set(keep[g.id])) for g in chosen if g.id in keep}
    by_kind: dict[str, dict[str, int]] = {}
    for g in chosen:
        if g.id in removed:
            stats = by_kind.setdefault(g.kind, {"units": 0, "removed_units": 0, "removed_params": 0})
            stats["units"] += g.n_units
            stats["removed_units"] += len(removed[g.id])
    for kind, stats in by_kind.items():
        stats["removed_params"] = count.removed({g.id: removed[g.id] for g in chosen if g.kind == kind and g.id in removed})
    units = sum(g.n_units for g in chosen)
    group_ratio = sum(len(r) for r in removed.values()) / units
    return Plan(keep=keep, group_ratio=group_ratio, params_removed=count.removed(removed), by_kind=by_kind)


def plan_of(groups: Sequence[Group], keep: Mapping[str, Sequence[int]]) -> Plan:
    """The :class:`Plan` that keeps ``keep[group id]`` of each named group (a plan made elsewhere, e.g. learned gates).

    ``groups`` are the planned groups (as :func:`select_groups` gives them; KV groups and query
    heads of one layer not together); their totals are counted exactly, couplings across kinds once.
    """
    keep = {gid: sorted(int(u) for u in units) for gid, units in keep.items()}
    return _finish(list(groups), keep, ParamCount(list(groups)))


def _keep_from_counts(chosen: Sequence[Group], orders: Mapping[str, np.ndarray], counts: Mapping[str, int]) -> dict[str, list[int]]:
    """Kept units per group once the first ``counts[group id]`` units of its removal order go."""
    return {g.id: sorted(orders[g.id][counts[g.id] :].tolist()) for g in chosen if counts.get(g.id)}


def _uniform_counts(
    chosen: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    orders: Mapping[str, np.ndarray],
    config: PlannerConfig,
    target: int,
    count: ParamCount,
    total_params: int,
    allowed: Mapping[str, frozenset] | None = None,
) -> dict[str, int]:
    """Units to remove per group: the one fraction meeting ``target`` parameters, the remainder in steps.

    The base is the largest fraction whose rounded removals stay within the target (and keep
    ``min_units`` everywhere).  Each group may then take one more step, in the order its rounded
    count would grow with the fraction, as :func:`_greedy` takes steps: a step that overshoots
    by more than stopping short falls short is skipped.  Groups of one kind and size (the MLP
    channels of every layer) step together, so identical layers keep identical sizes (a config
    can then express them).  So every group loses the base fraction or one step more, and the
    total lands within half the largest such lockstep step of the target.
    """
    r, min_units = rounding(config, allowed), config.min_units

    def counts(rho: float) -> dict[str, int]:
        return {g.id: _removed_units(g, rho, r(g)) for g in chosen}

    def params(c: Mapping[str, int]) -> int:
        return count.removed({gid: orders[gid][:k] for gid, k in c.items() if k})

    def fits(rho: float) -> bool:
        c = counts(rho)
        return all(_keeps_enough(g, c[g.id], min_units) for g in chosen) and params(c) <= target

    base = counts(_sup(fits)[0])
    norm = {g.id: _normalised(np.asarray(scores[g.id], dtype=np.float64)) for g in chosen}
    batches: dict[tuple, list[tuple[float, Group, np.ndarray]]] = {}  # (fraction, kind, size) -> the next steps
    for g in chosen:
        at = _sup(lambda rho, g=g: _removed_units(g, rho, r(g)) <= base[g.id])[1]  # where g's rounding next grows
        k = _removed_units(g, at, r(g))
        if k > base[g.id] and _keeps_enough(g, k, min_units):
            units = orders[g.id][base[g.id] : k]
            batches.setdefault((at, g.kind, g.n_units, g.unit_params), []).append((float(norm[g.id][units].mean()), g, units))
    steps = [
        (key[0], float(np.mean([score for score, _, _ in batch])), i, str(i), {g.id: units.tolist() for _, g, units in batch})
        for i, (key, batch) in enumerate(batches.items())
    ]
    steps.sort(key=lambda t: t[:3])
    params(base)  # count now holds base
    grown = _greedy(steps, target, count)
    best = {gid: k + len(grown.get(gid, ())) for gid, k in base.items()}
    total = count.total
    if target - total > _half_step(chosen, r, lockstep=True):
        raise _unreachable(config, target, total, total_params, _uniform_limit(chosen, min_units, r), ", use --strategy global")
    return best


def _uniform_limit(chosen: Sequence[Group], min_units: int, round_to: Rounding) -> str:
    """Why one fraction for every group can go no further: the group it would take below ``min_units``."""
    rt = _per_group(round_to)
    beyond = _sup(lambda rho: not any(_too_much(h, rho, min_units, rt(h)) for h in chosen))[1]
    g = next((g for g in chosen if _too_much(g, beyond, min_units, rt(g))), None)
    if g is None:  # rounding keeps round_to units of every group: the fraction is at its end
        return "when every group loses the same fraction"
    where = f"layer {g.layer}" if g.layer is not None else "the model"
    what = (
        f"remove every {g.kind} unit of {where}" if min_units == 1
        else f"leave fewer than --min-units {min_units} {g.kind} units in {where}"
    )
    return f"when every group loses the same fraction (a larger one would {what}, {g.n_units} units)"


def plan_uniform(
    groups: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    config: PlannerConfig,
    total_params: int,
    allowed: Mapping[str, frozenset] | None = None,
) -> Plan:
    """Every planned group loses the same fraction of its units, the lowest-scoring ones.

    ``allowed`` (under ``config.align``): group id -> the kept counts its group may end with
    (the head counts the model's config accepts); the fraction's rounding picks the nearest.

    Under ``config.kind_ratios`` the fraction is its kind's entry (query heads: that fraction of
    each KV group's heads).  Under ``config.ratio`` it is one fraction for every planned group of
    every kind -- hidden channels, heads and MLP channels alike, as Torch-Pruning's uniform ratio
    -- solved so that the parameters removed, counted exactly (:class:`~depgraph.groups.ParamCount`:
    a weight entry where a removed hidden channel crosses a removed MLP channel counts once),
    meet the target: the largest fraction whose rounded removals stay within the target, then
    one more step for some groups to close the remainder, groups of one kind and size together
    (see :func:`_uniform_counts`).  The result is within half the largest lockstep step of the
    target: one step (one unit; one query head per KV group; ``round_to`` units) in each group
    of one kind and size.  A target that the fraction cannot reach before some group falls below ``min_units``
    is refused, naming the largest reachable reduction.
    """
    pairs = _planned(groups, config)
    chosen = [g for g, _ in pairs]
    count = ParamCount(chosen)
    orders = {g.id: _removal_order(g, np.asarray(scores[g.id], dtype=np.float64)) for g in chosen}
    if config.kind_ratios is None:
        target = _target(config, total_params)
        n_remove = _uniform_counts(chosen, scores, orders, config, target, count, total_params, allowed)
        return _finish(chosen, _keep_from_counts(chosen, orders, n_remove), count)
    r = rounding(config, allowed)
    for g, kind in pairs:
        rho = config.kind_ratios[kind]
        if _too_much(g, rho, config.min_units, r(g)):
            asked, flag = _asked(config, kind)
            where = f"layer {g.layer}" if g.layer is not None else "the model"
            what = (
                f"remove every {g.kind} unit of {where}" if config.min_units == 1
                else f"leave fewer than --min-units {config.min_units} {g.kind} units in {where}"
            )
            raise PlanError(f"{asked} would {what} ({g.n_units} units, group ratio {rho:.3f}); lower {flag}")
    n_remove = {g.id: _removed_units(g, config.kind_ratios[kind], r(g)) for g, kind in pairs}
    return _finish(chosen, _keep_from_counts(chosen, orders, n_remove), count)


def _global_steps(
    chosen: Sequence[Group], scores: Mapping[str, np.ndarray], min_units: int, round_to: int = 1
) -> list[tuple[float, int, int, str, dict[str, list[int]]]]:
    """Removal steps ``(normalised score, group order, rank, group id, {group id: units})``, lowest first.

    Each group's scores are divided by their mean magnitude; a step's score is the mean of its
    units' (see :func:`_step_sizes` for what a step takes).  Within a group the steps keep their
    order, so a group always loses its lowest-scoring units.
    """
    steps = []
    for gi, g in enumerate(chosen):
        s = np.asarray(scores[g.id], dtype=np.float64)
        norm, order, start = _normalised(s), _removal_order(g, s), 0
        for i, size in enumerate(_step_sizes(g, min_units, round_to)):
            units = order[start : start + size]
            start += size
            steps.append((float(norm[units].mean()), gi, i, g.id, {g.id: units.tolist()}))
    steps.sort(key=lambda t: t[:3])
    return steps


class _UnitCount:
    """:class:`ParamCount`'s interface, counting removed units instead of parameters."""

    def __init__(self):
        self.total = 0

    def cost(self, units: Mapping[str, Sequence[int]]) -> int:
        return sum(len(us) for us in units.values())

    def take(self, units: Mapping[str, Sequence[int]]) -> int:
        self.total += self.cost(units)
        return self.cost(units)

    def removed(self, units: Mapping[str, Sequence[int]]) -> int:
        return self.cost(units)


def _greedy(steps: Sequence[tuple], target: int, count: ParamCount | _UnitCount) -> dict[str, list[int]]:
    """Units to remove per group: the steps, lowest first, until ``count.total`` reaches ``target``.

    A step is ``(*sort key, name, {group id: units})``.  A step that would overshoot by more
    than stopping short falls short is skipped, and no later step of that name is taken (a
    group's steps share its id as name); later steps of other names may still close the gap.
    ``count`` is charged the exact cost of each step taken.
    """
    removed: dict[str, list[int]] = {}
    closed: set[str] = set()
    for *_, name, units in steps:
        if count.total >= target:
            break
        if name in closed:
            continue
        if count.total + count.cost(units) - target > target - count.total:
            closed.add(name)
            continue
        count.take(units)
        for gid, us in units.items():
            removed.setdefault(gid, []).extend(us)
    return removed


def _capacity(steps: Sequence[tuple], count: ParamCount | _UnitCount) -> int:
    """What ``count`` removes when every step is taken (every group down to ``min_units``); resets ``count``."""
    every: dict[str, list[int]] = {}
    for *_, units in steps:
        for gid, us in units.items():
            every.setdefault(gid, []).extend(us)
    return count.removed(every)


def plan_global(
    groups: Sequence[Group], scores: Mapping[str, np.ndarray], config: PlannerConfig, total_params: int
) -> Plan:
    """Remove the lowest normalised scores across layers and kinds until ``config.ratio`` of the parameters is
    reached, or, per kind, until ``config.kind_ratios[kind]`` of that kind's planned units is.

    Each group's scores are divided by their mean magnitude, so layers and kinds with larger
    raw scores do not shield all their units.  Ranking by that normalised score is ranking by
    score per parameter when every group's importance is taken to be proportional to its
    parameters (``score / sum(scores) * group.params / unit_params`` is ``score / mean``), which
    keeps kinds of very different unit sizes comparable: a hidden channel (thousands of
    parameters) and an MLP channel (hundreds) of average importance in their groups rank alike.
    Each step is charged its exact parameter cost at the time it is taken
    (:class:`~depgraph.groups.ParamCount`), so a hidden channel costs less once MLP channels it
    crosses are gone.  The plan lands within half the largest step of any planned group of the
    target (see :func:`_greedy`); a target beyond what every group down to ``min_units`` removes
    is refused, naming that largest reduction.  Query heads leave in steps of one head per KV
    group; with ``round_to`` a step takes a group down to the next multiple of ``round_to``.
    """
    pairs = _planned(groups, config)
    chosen = [g for g, _ in pairs]
    count = ParamCount(chosen)
    if config.kind_ratios is None:
        target = _target(config, total_params)
        steps = _global_steps(chosen, scores, config.min_units, config.round_to)
        most = _capacity(steps, count)
        if target - most > _half_step(chosen, config.round_to):
            raise _unreachable(config, target, most, total_params, f"while every group keeps --min-units {config.min_units}")
        count.reset()
        removed = _greedy(steps, target, count)
    else:
        removed = {}
        for kind, r in config.kind_ratios.items():
            of_kind = [g for g, k in pairs if k == kind]
            target = round(r * sum(g.n_units for g in of_kind))
            steps = _global_steps(of_kind, scores, config.min_units, config.round_to)
            if target > _capacity(steps, _UnitCount()):
                asked, flag = _asked(config, kind)
                raise PlanError(f"{asked} cannot be reached while every group keeps {config.min_units} unit(s); lower {flag}")
            removed |= _greedy(steps, target, _UnitCount())
    keep = {g.id: sorted(set(range(g.n_units)) - set(removed[g.id])) for g in chosen if removed.get(g.id)}
    return _finish(chosen, keep, count)


STRATEGIES = {"uniform": plan_uniform, "global": plan_global}


def make_plan(
    groups: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    config: PlannerConfig,
    total_params: int,
    allowed: Mapping[str, frozenset] | None = None,
) -> Plan:
    """Kept units per group, by ``config.strategy``; ``allowed`` kept counts per group id under ``align``
    (which implies the uniform strategy, see :func:`plan_uniform`)."""
    if config.align is not None:
        return plan_uniform(groups, scores, config, total_params, allowed)
    return STRATEGIES[config.strategy](groups, scores, config, total_params)
