"""Importance estimators and aggregations: small protocols, explicit registries.

An estimator scores every unit of a group, separately for each member (parameter axis):
``score(group, ctx) -> Tensor (n_members, n_units)``; a member it cannot score (no weights, no
calibration statistics for it) is a row of NaN.  An aggregation reduces the scored rows to one
score per unit (unscored rows are left out, so ``prod`` or ``mean`` of an activation criterion
that scores only the input-side member is that member's score).  Both are registered by name,
an estimator with its pydantic config::

    from pydantic import BaseModel, Field
    from pruners.importance import register_estimator

    class MyConfig(BaseModel):
        power: float = Field(2.0, description="exponent applied to |w|")

    @register_estimator("my-magnitude", config=MyConfig)
    class MyMagnitude:
        def __init__(self, config: MyConfig):
            self.config = config

        def score(self, group, ctx):
            return member_reduce(group, ctx, lambda w: w.abs().pow(self.config.power))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from depgraph.groups import Group

from .signals import Signals


@dataclass
class ScoringContext:
    """What estimators may read: named parameters, calibration signals, a seeded generator."""

    model: nn.Module
    generator: torch.Generator
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    signals: Signals = field(default_factory=Signals)

    @classmethod
    def for_model(cls, model: nn.Module, seed: int = 0, signals: Signals | None = None) -> ScoringContext:
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        return cls(model=model, generator=torch.Generator().manual_seed(seed), params=params, signals=signals or Signals())


@runtime_checkable
class Estimator(Protocol):
    """Scores units of a group.  ``needs`` names the calibration signals it reads
    (``"grad"``, ``"fisher"``, ``"activations"``); leave it empty for data-free estimators."""

    needs: frozenset[str]

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        """Per-member, per-unit scores: shape ``(n_members, n_units)``; higher means keep; NaN rows: not scored."""
        ...


def needs_of(estimator) -> frozenset[str]:
    return frozenset(getattr(estimator, "needs", ()))


@dataclass(frozen=True)
class EstimatorSpec:
    name: str
    factory: Callable[[BaseModel], Estimator]
    config: type[BaseModel]
    description: str


ESTIMATORS: dict[str, EstimatorSpec] = {}
AGGREGATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def register_estimator(name: str, config: type[BaseModel]):
    """Register an estimator class (constructed with its config) under ``name``."""

    def deco(cls):
        if name in ESTIMATORS:
            raise ValueError(f"estimator {name!r} is already registered")
        doc = (cls.__doc__ or "").strip().splitlines()
        ESTIMATORS[name] = EstimatorSpec(name, cls, config, doc[0] if doc else "")
        return cls

    return deco


def register_aggregation(name: str):
    """Register ``fn(scores (n_members, n_units)) -> (n_units,)`` under ``name``."""

    def deco(fn):
        if name in AGGREGATIONS:
            raise ValueError(f"aggregation {name!r} is already registered")
        AGGREGATIONS[name] = fn
        return fn

    return deco


def load_plugins(group: str = "depprune.estimators") -> list[str]:
    """Import every installed plugin module advertised under the ``depprune.estimators`` entry point.

    A plugin package declares ``[project.entry-points."depprune.estimators"] my = "my_pkg.estimators"``;
    importing the module runs its ``register_estimator`` / ``register_aggregation`` calls.
    """
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        ep.load()
        loaded.append(ep.name)
    return loaded


def make_estimator(name: str, **options) -> Estimator:
    """Build a registered estimator; unknown names and bad options fail with the valid choices."""
    if name not in ESTIMATORS:
        raise KeyError(f"unknown importance {name!r}; registered: {', '.join(sorted(ESTIMATORS))}")
    spec = ESTIMATORS[name]
    return spec.factory(spec.config(**options))


def aggregate(name: str, scores: torch.Tensor) -> torch.Tensor:
    """Reduce member rows ``(n_members, n_units)`` to ``(n_units,)`` with the registered ``name``.

    Unscored (all-NaN) rows are left out; with none scored, every unit scores zero.

    >>> nan = float("nan")
    >>> aggregate("prod", torch.tensor([[nan, nan], [2.0, 3.0], [4.0, 1.0]], dtype=torch.float64))
    tensor([8., 3.], dtype=torch.float64)
    """
    if name not in AGGREGATIONS:
        raise KeyError(f"unknown aggregation {name!r}; registered: {', '.join(sorted(AGGREGATIONS))}")
    scored = scores[~torch.isnan(scores).all(dim=1)]
    if not len(scored):
        return torch.zeros(scores.shape[1], dtype=scores.dtype)
    return AGGREGATIONS[name](scored)


def member_reduce(group: Group, ctx: ScoringContext, elementwise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum ``elementwise(W)`` over each unit's slice of each member: ``(n_members, n_units)``.

    A member without weights in ``ctx`` (a buffer, a meta tensor) is not scored: a NaN row.
    """
    return unit_sums(group, ctx, lambda name, axis, w: elementwise(w))


def unit_sums(
    group: Group,
    ctx: ScoringContext,
    values: Callable[[str, int, torch.Tensor], torch.Tensor | None],
    post: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum ``values(name, axis, W)`` over each unit's slice of each member, then apply ``post``.

    ``W`` is passed in at least fp32 (fp32 and fp64 weights as they are, without a copy;
    half-precision ones upcast to fp32).  ``values`` returns a tensor shaped like ``W`` in
    that precision, or ``None`` when the member has no score (e.g. no calibration statistics
    for it): that row is NaN, and aggregation leaves it out.  The sums are taken in fp64.

    Memory: a member costs ``values``' own temporaries (about one weight-sized tensor when
    it works in place) plus fp64 partial sums over slices of at most ``_SUM_CHUNK`` elements,
    never an fp64 copy of the whole weight.
    """
    rows = []
    for m in group.members:
        w = ctx.params.get(m.param)
        row = torch.full((group.n_units,), torch.nan, dtype=torch.float64)
        vals = None
        if w is not None and w.device.type != "meta":
            w = w.detach()
            vals = values(m.param, m.axis, w if w.dtype in (torch.float32, torch.float64) else w.float())
        if vals is not None:
            row.zero_()
            per_pos = _sum_except(vals, m.axis).to(row.device)  # (axis size,) fp64, from the weight's device to the scores'
            del vals
            unit_of = torch.as_tensor(m.unit_of)
            sel = unit_of >= 0
            row.index_add_(0, unit_of[sel], per_pos[sel.nonzero().squeeze(1)])
            if post is not None:
                row = post(row)
        rows.append(row)
    return torch.stack(rows)


_SUM_CHUNK = 1 << 22  # elements per fp64 partial sum in :func:`_sum_except` (32 MB in fp64)


def _sum_except(vals: torch.Tensor, axis: int) -> torch.Tensor:
    """fp64 sum of ``vals`` over every dim but ``axis``, in slices along ``axis`` so that the
    fp64 upcast of a slice, not of the whole tensor, is the largest temporary."""
    dims = [d for d in range(vals.ndim) if d != axis]
    if not dims or vals.numel() == 0:
        return vals.sum(dim=dims, dtype=torch.float64) if dims else vals.to(torch.float64)
    per_index = max(1, vals.numel() // max(1, vals.shape[axis]))
    step = max(1, _SUM_CHUNK // per_index)
    return torch.cat([c.sum(dim=dims, dtype=torch.float64) for c in vals.split(step, dim=axis)])


@register_aggregation("sum")
def _sum(s: torch.Tensor) -> torch.Tensor:
    return s.sum(0)


@register_aggregation("mean")
def _mean(s: torch.Tensor) -> torch.Tensor:
    return s.mean(0)


@register_aggregation("max")
def _max(s: torch.Tensor) -> torch.Tensor:
    return s.max(0).values


@register_aggregation("prod")
def _prod(s: torch.Tensor) -> torch.Tensor:
    return s.prod(0)


@register_aggregation("last")
def _last(s: torch.Tensor) -> torch.Tensor:
    """The last member's row (members are ordered by execution: e.g. ``down_proj`` for an MLP channel)."""
    return s[-1]


def unit_scores(group: Group, estimator: Estimator, ctx: ScoringContext, aggregation: str = "sum") -> np.ndarray:
    """One score per unit of ``group``: ``aggregation`` over the members the estimator scored."""
    return aggregate(aggregation, estimator.score(group, ctx)).numpy()
