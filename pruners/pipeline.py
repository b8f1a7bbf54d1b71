"""One-shot pruning in one call: trace -> groups -> scores -> plan -> slice (:func:`prune`).

The steps are also public on their own: :func:`analyze` (trace and groups), :func:`score_groups`
(importance), :func:`pruners.planner.make_plan` and :func:`pruners.slicing.execute`.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from depgraph import meta_copy, trace
from depgraph.groups import Group, find_groups

from .alignment import aligned_head_counts, unaligned
from .config import PruneConfig
from .errors import NonFiniteError, PlanError, UsageError
from .importance import ScoringContext, Signals, aggregate, collect_signals, make_estimator, needs_of
from .importance.calibration import calibration_samples
from .io.checkpoint import check_rebuilt_buffers
from .planner import Plan, make_plan, select_groups
from .slicing.executor import PruneRecord, execute, kept_positions, validate_keep


@dataclass
class PruneResult:
    model: nn.Module
    record: PruneRecord
    plan: Plan
    groups: list[Group]
    params_before: int
    params_after: int
    report: dict = field(default_factory=dict)  # what the method adds to the run's report (a learned method: its training)

    @property
    def achieved_ratio(self) -> float:
        return 1 - self.params_after / self.params_before


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())


def analyze(model: nn.Module) -> tuple[object, list[Group]]:
    """Trace a meta copy of ``model`` and find its groups (no weights touched)."""
    tr = trace(meta_copy(model))
    return tr, find_groups(tr)


def member_scores(
    model: nn.Module,
    groups: list[Group],
    config: PruneConfig,
    samples: list[torch.Tensor] | None = None,
    progress: bool = True,
    signals: Signals | None = None,
) -> dict[str, torch.Tensor]:
    """The estimator's rows for every group, ``(n_members, n_units)`` per group id, before aggregation.

    The estimator is ``config.importance`` with ``config.importance_options``, seeded by
    ``config.seed``.  Calibration ``samples`` feed estimators that need signals (collected
    here by :func:`group_signals`, unless already collected ones are passed as ``signals``).
    An estimator whose rows are ``member_wise`` and that needs only gradients scores each
    decoder layer's members as soon as that layer's gradients are complete, and drops them
    (:mod:`pruners.importance.layerwise`): the gradients of the whole model are never held.
    """
    estimator = make_estimator(config.importance, **config.importance_options)
    needs = needs_of(estimator)
    ctx = ScoringContext.for_model(model, config.seed, signals)
    rows: dict[str, list[torch.Tensor | None]] = {g.id: [None] * len(g.members) for g in groups}
    if needs and signals is None:
        where: dict[str, list[tuple[Group, int]]] = {}
        for g in groups:
            for i, m in enumerate(g.members):
                where.setdefault(m.param, []).append((g, i))

        def on_layer(names: list[str]) -> None:  # score these weights' members now, then drop their gradients
            for name in names:
                for g, i in where.get(name, ()):
                    rows[g.id][i] = estimator.score(dataclasses.replace(g, members=[g.members[i]]), ctx)[0]
                ctx.signals.grad.pop(name, None)

        member_wise = getattr(estimator, "member_wise", False)
        group_signals(model, groups, needs, samples, progress, on_layer if member_wise else None, ctx.signals,
                      activation_bytes(model, config.calibration.activation_memory))
    out = {}
    for g in tqdm(groups, desc=f"scoring ({config.importance})", disable=not progress, leave=False):
        missing = [i for i, r in enumerate(rows[g.id]) if r is None]
        if len(missing) == len(g.members):
            out[g.id] = estimator.score(g, ctx)
            continue
        for i in missing:
            rows[g.id][i] = estimator.score(dataclasses.replace(g, members=[g.members[i]]), ctx)[0]
        out[g.id] = torch.stack(rows[g.id])
    return out


def activation_bytes(model: nn.Module, activation_memory: float | str) -> int:
    """``CalibrationConfig.activation_memory`` in bytes: a multiple of ``model``'s weight bytes ('auto' here: 0).

    >>> activation_bytes(nn.Linear(10, 10, bias=False), 0.5)  # 100 fp32 weights
    200
    """
    if activation_memory == "auto":
        return 0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return int(min(activation_memory * weights, 2**62))


def group_signals(
    model: nn.Module, groups: list[Group], needs: frozenset[str], samples: list[torch.Tensor] | None, progress: bool = True,
    on_layer=None, into: Signals | None = None, keep_bytes: int = 0,
) -> Signals:
    """The calibration signals ``needs`` names, for the weights of ``groups`` only (no gradients for others).

    ``on_layer``, ``into`` and ``keep_bytes``: see :func:`pruners.importance.signals.collect_signals`.
    """
    if not samples:
        raise UsageError(f"reading {', '.join(sorted(needs))} needs calibration samples (CLI: --calibration FILE)")
    scored = {m.param for g in groups for m in g.members}
    return collect_signals(model, samples, needs, progress, params=scored, on_layer=on_layer, into=into, keep_bytes=keep_bytes)


def score_groups(
    model: nn.Module,
    groups: list[Group],
    config: PruneConfig,
    samples: list[torch.Tensor] | None = None,
    progress: bool = True,
    signals: Signals | None = None,
) -> dict[str, np.ndarray]:
    """One score per unit of every group: :func:`member_scores` reduced by ``config.aggregation``.

    A group none of whose members the estimator scores is a :class:`~pruners.errors.UsageError`.
    """
    rows = member_scores(model, groups, config, samples, progress, signals)
    return {gid: aggregate(config.aggregation, r, gid, config.importance).numpy() for gid, r in rows.items()}


def run_samples(config: PruneConfig, tokenizer) -> list[torch.Tensor]:
    """The calibration samples of a run: ``config.calibration`` drawn under the run's ``seed``."""
    return calibration_samples(config.calibration, tokenizer, config.seed)


def check_context(config: PruneConfig, model: nn.Module) -> None:
    """Calibration windows must fit the model's context (``max_position_embeddings``).

    >>> from types import SimpleNamespace
    >>> check_context(PruneConfig(ratio=0.2), SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64)))
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: calibration seq_len 128 (--calibration-seq-len) is longer than the model's context, max_position_embeddings 64
    """
    context = getattr(model.config, "max_position_embeddings", None)
    if isinstance(context, int) and config.calibration.seq_len > context:
        raise UsageError(
            f"calibration seq_len {config.calibration.seq_len} (--calibration-seq-len) is longer than the model's "
            f"context, max_position_embeddings {context}"
        )


def check_feasible(groups: list[Group], config: PruneConfig, total_params: int) -> Plan:
    """Plan with dummy scores: raises :class:`~pruners.slicing.executor.PlanError` before any weight is read.

    Works for either target (``ratio`` or ``kind_ratios``) and either strategy.
    """
    dummy = {g.id: np.zeros(g.n_units) for g in select_groups(groups, config.kinds, config.layers)}
    return make_plan(groups, dummy, config, total_params)


def prune(
    model: nn.Module,
    config: PruneConfig,
    progress: bool = True,
    analysis=None,
    tokenizer=None,
    samples: list[torch.Tensor] | None = None,
    inplace: bool = False,
) -> PruneResult:
    """Prune ``model`` as ``config`` says into a new model; ``model`` itself is never modified, unless ``inplace``.

    The new model holds only the kept weights (built from a weightless copy), so the peak memory
    is the source plus the pruned model.  With ``inplace=True`` the given model is sliced and
    returned as ``result.model``: each tensor is replaced by its slice, and the old one freed when
    nothing else holds it (transformers keeps a model loaded from safetensors mapped to its file
    until the model is dropped, so there it saves nothing).  An error raised after slicing has
    begun may leave it partly pruned.  Rounds after the first always slice the previous round's
    model in place: it is the run's own.

    ``analysis`` may pass a ``(trace, groups)`` pair from :func:`analyze` of a model with the
    same structure (e.g. its meta copy) to skip tracing again.  ``tokenizer`` is needed when
    the estimator reads calibration data (``config.calibration.source``), unless the
    calibration ``samples`` (:func:`calibration_samples` of the config) are passed.
    NaN/Inf in the source or pruned model's logits, or in the scores, raise
    :class:`~pruners.errors.NonFiniteError` unless ``config.allow_nonfinite``.
    """
    if samples is None and needs_of(make_estimator(config.importance, **config.importance_options)):
        if tokenizer is None or config.calibration.source is None:
            raise UsageError(f"importance {config.importance!r} needs calibration data: a tokenizer and calibration.source")
        check_context(config, model)
        samples = run_samples(config, tokenizer)
    if config.rounds == 1:
        return _one_round(model, config, progress, analysis, samples, inplace)
    total, current, results = count_params(model), model, []
    for r in range(1, config.rounds + 1):
        left = round(total * (1 - config.ratio) ** (r / config.rounds)) if r < config.rounds else total - round(config.ratio * total)
        step = config.model_copy(update={"ratio": 1 - left / count_params(current), "rounds": 1})
        results.append(_one_round(current, step, progress, analysis if r == 1 else None, samples, inplace or r > 1))
        current = results[-1].model
    return chain_rounds(results)


def _one_round(model: nn.Module, config: PruneConfig, progress: bool, analysis, samples, inplace: bool) -> PruneResult:
    """Score, plan and slice once (:func:`prune` with ``config.rounds == 1``)."""
    torch.manual_seed(config.seed)
    tr, groups = analysis if analysis is not None else analyze(model)
    before = count_params(model)
    chosen = select_groups(groups, config.kinds, config.layers)
    probe = probe_tokens(model, sample=samples[0] if samples else None)
    if not config.allow_nonfinite and inplace:  # before it is sliced; on a copy, only when something is refused
        check_finite_logits(model, probe, "the source model")
    if config.calibration.activation_memory == "auto":  # as much as the pruned model will take (none in place)
        kept = 0.0 if inplace else 1 - (config.ratio or check_feasible(groups, config, before).params_removed / before)
        config = config.model_copy(update={"calibration": config.calibration.model_copy(update={"activation_memory": kept})})
    with _blame_the_source(model, probe, inplace or config.allow_nonfinite):  # NaN signals: no member scored
        scores = score_groups(model, chosen, config, samples, progress)
        if not config.allow_nonfinite:
            check_finite_scores(scores, config.importance)
    allowed = aligned_head_counts(groups, model) if config.align is not None else None
    plan = make_plan(groups, scores, config, before, allowed)
    pruned, record = execute(model, tr, groups, plan.keep, inplace=inplace)
    check_rebuilt_buffers(pruned, record)  # a plan that slices a computed buffer could not be saved
    if config.align is not None and not record.config:
        raise PlanError(unaligned(model, config))
    if not config.allow_nonfinite:
        with _blame_the_source(model, probe, inplace):
            check_finite_logits(pruned, probe, "the pruned model")
    return PruneResult(pruned, record, plan, groups, before, count_params(pruned))


@contextmanager
def _blame_the_source(model: nn.Module, probe: torch.Tensor, checked: bool):
    """A refusal raised inside names the source model instead when the source's own logits are non-finite.

    The source is checked only then (a forward pass of the whole model saved on every prune that
    goes through), unless it was ``checked`` before.  Refusals: :class:`NonFiniteError`, and the
    :class:`UsageError` of a group no member of which is scored (NaN signals look like that).
    """
    try:
        yield
    except (NonFiniteError, UsageError):
        if not checked:
            check_finite_logits(model, probe, "the source model")
        raise


def chain_rounds(results: list[PruneResult]) -> PruneResult:
    """Rounds of pruning as one result on the first model's groups: the last model, and the plans
    and records composed so that kept units, shapes and size attributes refer to the original.

    A unit of an original group is kept when any position of its first member survives every
    round (positions compose: a later round's kept positions index the earlier survivors).
    """
    first, last = results[0], results[-1]
    survivors: dict[tuple[str, int], np.ndarray] = {}  # (tensor, axis) -> surviving original positions
    for res in results:
        step = kept_positions(res.groups, validate_keep(res.groups, res.plan.keep))
        for key, pos in step.items():
            survivors[key] = survivors[key][pos] if key in survivors else pos
    keep = {}
    for g in first.groups:
        m = next((m for m in g.members if (m.param, m.axis) in survivors), None)
        if m is not None:
            units = np.unique(m.unit_of[survivors[(m.param, m.axis)]])
            if len(units[units >= 0]) < g.n_units:
                keep[g.id] = units[units >= 0].tolist()
    by_kind: dict[str, dict[str, int]] = {}
    for res in results:
        for kind, s in res.plan.by_kind.items():
            acc = by_kind.setdefault(kind, {"units": s["units"], "removed_units": 0, "removed_params": 0})
            acc["removed_units"] += s["removed_units"]
            acc["removed_params"] += s["removed_params"]
    units = sum(s["units"] for s in by_kind.values())
    plan = Plan(
        keep=keep,
        group_ratio=sum(s["removed_units"] for s in by_kind.values()) / units if units else 0.0,
        params_removed=first.params_before - last.params_after,
        by_kind=by_kind,
    )
    attributes = {(m, a): v for res in results for m, a, v in res.record.attributes}
    configs = [res.record.config for res in results]
    record = PruneRecord(
        shapes={name: shape for res in results for name, shape in res.record.shapes.items()},
        attributes=[(m, a, v) for (m, a), v in attributes.items()],
        kept=keep,
        config=None if any(c is None for c in configs) else {k: v for c in configs for k, v in c.items()},
    )
    if record.config is None:  # the last round's layers, against the config its model carries
        record.per_layer = last.record.per_layer
    return PruneResult(last.model, record, plan, first.groups, first.params_before, last.params_after)


def check_finite_scores(scores: dict[str, np.ndarray], importance: str) -> None:
    """Refuse NaN/Inf unit scores: a plan from them would be decided by tie-breaking, not importance.

    >>> check_finite_scores({"mlp_channel@0": np.array([1.0, np.inf])}, "l2")
    Traceback (most recent call last):
    ...
    pruners.errors.NonFiniteError: importance 'l2' gave non-finite scores to 1 of 2 units of mlp_channel@0 (the weights or calibration signals overflow or hold NaN); pass --allow-nonfinite to prune anyway
    """
    for gid, s in scores.items():
        bad = int((~np.isfinite(s)).sum())
        if bad:
            raise NonFiniteError(
                f"importance {importance!r} gave non-finite scores to {bad} of {s.size} units of {gid} "
                "(the weights or calibration signals overflow or hold NaN); pass --allow-nonfinite to prune anyway"
            )


def probe_tokens(model: nn.Module, length: int = 16, sample: torch.Tensor | None = None) -> torch.Tensor:
    """A fixed ``(1, length)`` batch of token ids for checking a model's logits (within its context).

    The first ``length`` tokens of a calibration ``sample`` when one is given (real text; a
    short probe, since each check is a forward pass of the whole model), else seeded random ids.

    >>> probe_tokens(None, 4, sample=torch.arange(100).unsqueeze(0))
    tensor([[0, 1, 2, 3]])
    """
    if sample is not None:
        return sample[:, :length]  # (1, <= length)
    context = getattr(model.config, "max_position_embeddings", None)
    if isinstance(context, int):
        length = max(1, min(length, context))
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))


def check_finite_logits(model: nn.Module, ids: torch.Tensor, what: str) -> None:
    """Refuse a model whose logits on ``ids`` hold NaN/Inf (``what`` names it in the message)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(ids.to(device)).logits  # (1, T, vocab)
    bad = int((~torch.isfinite(logits)).sum())
    if bad:
        raise NonFiniteError(
            f"{what} gives non-finite logits ({bad} of {logits.numel()} values on a {ids.shape[1]}-token probe); "
            "pass --allow-nonfinite to save it anyway"
        )
