"""The public Python API: trace -> groups -> scores -> plan -> slice, in one call.

>>> from pruners.pipeline import PruneConfig
>>> PruneConfig(ratio=0.2, importance="l2").kinds
['attention', 'mlp_channel']
>>> PruneConfig(kind_ratios={"attention": 0.25, "mlp_channel": 0.5}).planner().kind_ratios
{'attention': 0.25, 'mlp_channel': 0.5}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from tqdm.auto import tqdm

from depgraph import meta_copy, trace
from depgraph.groups import Group, find_groups

from .calibration import MAX_SEED, CalibrationConfig, calibration_samples
from .errors import NonFiniteError, UsageError
from .executor import PruneRecord, execute
from .importance import (
    AGGREGATIONS,
    ESTIMATORS,
    ScoringContext,
    aggregate,
    collect_signals,
    make_estimator,
    needs_of,
    validate_options,
)
from .planner import LayerRange, Plan, PlannerConfig, PruneTarget, make_plan, select_groups


class PruneConfig(PruneTarget):
    """One structured-pruning run: a target (``ratio`` or ``kind_ratios``, see :class:`PruneTarget`) and the rest."""

    importance: str = Field("l2", description="registered importance estimator (see `depprune prune --help`)")
    importance_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the importance estimator, its config's fields (e.g. {power: 2.5}; CLI: --importance-option KEY=VALUE)",
    )
    aggregation: str = Field("sum", description="how member scores combine into one score per unit")
    strategy: Literal["uniform", "global"] = Field("uniform", description="uniform per-group ratio, or global ranking")
    layers: LayerRange | None = Field(
        None, description="[start, end) layers to prune: indices (negative from the end) or fractions in [0, 1]"
    )
    min_units: int = Field(1, strict=True, ge=1, description="units every pruned group keeps at least")
    round_to: int = Field(1, strict=True, ge=1, description="round kept units per group to a multiple of this")
    seed: int = Field(0, strict=True, ge=0, le=MAX_SEED, description="seed for random importance and any sampling, in [0, 2**32 - 1]")
    allow_nonfinite: bool = Field(
        False, description="go on when weights, scores or the pruned model's logits hold NaN/Inf (default: refuse)"
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="calibration data for gradient/activation estimators"
    )

    @field_validator("importance", "aggregation")
    @classmethod
    def _registered(cls, v: str, info) -> str:
        registry = ESTIMATORS if info.field_name == "importance" else AGGREGATIONS
        if v not in registry:
            raise ValueError(f"unknown {info.field_name} {v!r}; registered: {', '.join(sorted(registry))}")
        return v

    @model_validator(mode="after")
    def _options_of_the_estimator(self) -> PruneConfig:
        self.importance_options = validate_options(self.importance, self.importance_options)
        return self

    def planner(self) -> PlannerConfig:
        return PlannerConfig(
            ratio=self.ratio, kind_ratios=self.kind_ratios, kinds=self.kinds, strategy=self.strategy, layers=self.layers,
            min_units=self.min_units, round_to=self.round_to,
        )


@dataclass
class PruneResult:
    model: nn.Module
    record: PruneRecord
    plan: Plan
    groups: list[Group]
    params_before: int
    params_after: int

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
    importance: str,
    seed: int,
    progress: bool = True,
    samples: list[torch.Tensor] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """The estimator's rows for every group, ``(n_members, n_units)`` per group id, before aggregation.

    ``options`` configure the estimator (its config's fields, see
    :func:`~pruners.importance.validate_options`).  Calibration ``samples`` feed estimators
    that need signals; only the groups' own weights are differentiated.
    """
    estimator = make_estimator(importance, **(options or {}))
    needs = needs_of(estimator)
    if needs and not samples:
        raise ValueError(f"importance {importance!r} needs calibration samples (CLI: --calibration FILE)")
    scored = {m.param for g in groups for m in g.members}  # no gradients for weights no group reads
    signals = collect_signals(model, samples or [], needs, progress, params=scored) if needs else None
    ctx = ScoringContext.for_model(model, seed, signals)
    return {
        g.id: estimator.score(g, ctx)
        for g in tqdm(groups, desc=f"scoring ({importance})", disable=not progress, leave=False)
    }


def score_groups(
    model: nn.Module,
    groups: list[Group],
    importance: str,
    aggregation: str,
    seed: int,
    progress: bool = True,
    samples: list[torch.Tensor] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """One score per unit of every group: :func:`member_scores` reduced by ``aggregation``.

    A group none of whose members the estimator scores is a :class:`~pruners.errors.UsageError`.
    """
    rows = member_scores(model, groups, importance, seed, progress, samples, options)
    return {gid: aggregate(aggregation, r, gid, importance).numpy() for gid, r in rows.items()}


def run_samples(config: PruneConfig, tokenizer) -> list[torch.Tensor]:
    """The calibration samples of a run: ``config.calibration`` drawn under the run's ``seed``."""
    return calibration_samples(config.calibration.model_copy(update={"seed": config.seed}), tokenizer)


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
    """Plan with dummy scores: raises :class:`~pruners.executor.PlanError` before any weight is read.

    Works for either target (``ratio`` or ``kind_ratios``) and either strategy.
    """
    planner = config.planner()
    dummy = {g.id: np.zeros(g.n_units) for g in select_groups(groups, planner.kinds, planner.layers)}
    return make_plan(groups, dummy, planner, total_params)


def prune(
    model: nn.Module,
    config: PruneConfig,
    progress: bool = True,
    analysis=None,
    tokenizer=None,
    samples: list[torch.Tensor] | None = None,
) -> PruneResult:
    """Prune a copy of ``model`` as ``config`` says; ``model`` itself is never modified.

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
    torch.manual_seed(config.seed)
    tr, groups = analysis if analysis is not None else analyze(model)
    before = count_params(model)
    planner = config.planner()
    chosen = select_groups(groups, planner.kinds, planner.layers)
    probe = samples[0] if samples else probe_tokens(model)
    if not config.allow_nonfinite:
        check_finite_logits(model, probe, "the source model")
    scores = score_groups(
        model, chosen, config.importance, config.aggregation, config.seed, progress, samples, config.importance_options
    )
    if not config.allow_nonfinite:
        check_finite_scores(scores, config.importance)
    plan = make_plan(groups, scores, planner, before)
    pruned, record = execute(model, tr, groups, plan.keep)
    if not config.allow_nonfinite:
        check_finite_logits(pruned, probe, "the pruned model")
    return PruneResult(pruned, record, plan, groups, before, count_params(pruned))


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


def probe_tokens(model: nn.Module, length: int = 16) -> torch.Tensor:
    """A fixed ``(1, length)`` batch of token ids (seeded) for checking a model's logits (within its context)."""
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
