"""The public Python API: trace -> groups -> scores -> plan -> slice, in one call.

>>> from pruners.pipeline import PruneConfig
>>> PruneConfig(ratio=0.2, importance="l2").kinds
['attention', 'mlp_channel']
>>> PruneConfig(kind_ratios={"attention": 0.25, "mlp_channel": 0.5}).planner().kind_ratios
{'attention': 0.25, 'mlp_channel': 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn
from tqdm.auto import tqdm

from depgraph import meta_copy, trace
from depgraph.groups import Group, find_groups

from .calibration import CalibrationConfig, calibration_samples
from .executor import PruneRecord, execute
from .importance import (
    AGGREGATIONS,
    ESTIMATORS,
    ScoringContext,
    aggregate,
    collect_signals,
    make_estimator,
    needs_of,
)
from .planner import LayerBound, Plan, PlannerConfig, PruneTarget, make_plan, select_groups


class PruneConfig(PruneTarget):
    """One structured-pruning run: a target (``ratio`` or ``kind_ratios``, see :class:`PruneTarget`) and the rest."""

    importance: str = Field("l2", description="registered importance estimator (see `depprune prune --help`)")
    aggregation: str = Field("sum", description="how member scores combine into one score per unit")
    strategy: Literal["uniform", "global"] = Field("uniform", description="uniform per-group ratio, or global ranking")
    layers: tuple[LayerBound, LayerBound] | None = Field(
        None, description="[start, end) layers to prune: indices (negative from the end) or fractions"
    )
    min_units: int = Field(1, ge=1, description="units every pruned group keeps at least")
    round_to: int = Field(1, ge=1, description="round kept units per group to a multiple of this")
    seed: int = Field(0, description="seed for random importance and any sampling")
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
) -> dict[str, torch.Tensor]:
    """The estimator's rows for every group, ``(n_members, n_units)`` per group id, before aggregation.

    Calibration ``samples`` feed estimators that need signals; only the groups' own weights
    are differentiated.
    """
    estimator = make_estimator(importance)
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
) -> dict[str, np.ndarray]:
    """One score per unit of every group: :func:`member_scores` reduced by ``aggregation``."""
    rows = member_scores(model, groups, importance, seed, progress, samples)
    return {gid: aggregate(aggregation, r).numpy() for gid, r in rows.items()}


def check_feasible(groups: list[Group], config: PruneConfig, total_params: int) -> Plan:
    """Plan with dummy scores: raises :class:`~pruners.executor.PlanError` before any weight is read.

    Works for either target (``ratio`` or ``kind_ratios``) and either strategy.
    """
    planner = config.planner()
    dummy = {g.id: np.zeros(g.n_units) for g in select_groups(groups, planner.kinds, planner.layers)}
    return make_plan(groups, dummy, planner, total_params)


def prune(model: nn.Module, config: PruneConfig, progress: bool = True, analysis=None, tokenizer=None) -> PruneResult:
    """Prune a copy of ``model`` as ``config`` says; ``model`` itself is never modified.

    ``analysis`` may pass a ``(trace, groups)`` pair from :func:`analyze` of a model with the
    same structure (e.g. its meta copy) to skip tracing again.  ``tokenizer`` is needed when
    the estimator reads calibration data (``config.calibration.source``).
    """
    samples = None
    if needs_of(make_estimator(config.importance)):
        if tokenizer is None or config.calibration.source is None:
            raise ValueError(f"importance {config.importance!r} needs calibration data: a tokenizer and calibration.source")
        samples = calibration_samples(config.calibration.model_copy(update={"seed": config.seed}), tokenizer)
    torch.manual_seed(config.seed)
    tr, groups = analysis if analysis is not None else analyze(model)
    before = count_params(model)
    planner = config.planner()
    chosen = select_groups(groups, planner.kinds, planner.layers)
    scores = score_groups(model, chosen, config.importance, config.aggregation, config.seed, progress, samples)
    plan = make_plan(groups, scores, planner, before)
    pruned, record = execute(model, tr, groups, plan.keep)
    return PruneResult(pruned, record, plan, groups, before, count_params(pruned))
