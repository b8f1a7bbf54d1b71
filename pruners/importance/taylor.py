"""Taylor importance (LLM-Pruner): the loss change from removing weights, to first or second order.

With ``G`` the mean calibration gradient and ``F`` the diagonal Fisher (mean of per-sample
squared gradients), for the weights ``W`` of one unit in one member:

* ``taylor-vector``:  ``|sum(W * G)|`` -- the unit's weights removed together, first order;
* ``taylor-element``: ``sum(|W * G|)`` -- each weight on its own, first order;
* ``taylor-second``:  ``sum(W * F * W) / 2`` -- second order, Fisher for the Hessian;
* ``taylor-mix``:     ``sum(|W * G - W * F * W / 2|)`` -- first order minus half the second.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from depgraph.groups import Group

from .registry import ScoringContext, register_estimator, unit_sums


class TaylorConfig(BaseModel):
    """Taylor estimators take no options; calibration is configured for the whole run."""

    model_config = ConfigDict(extra="forbid")


# Signals are fp32 (see :mod:`.signals`).  Where every summed term is non-negative, the
# elementwise values are taken in the precision of ``w`` (at least fp32, see :func:`unit_sums`)
# and summed in blocks in that precision, accumulated in fp64 (:func:`unit_sums`): no cancellation,
# so the relative error stays ~1e-7.  The products are taken a block at a time (``blockwise``):
# a member's temporaries are one block's, not a weight's.


def _grad(ctx: ScoringContext, name: str, w: torch.Tensor) -> torch.Tensor | None:
    g = ctx.signals.grad.get(name)
    return None if g is None else g.to(w.dtype)


def _fisher(ctx: ScoringContext, name: str, w: torch.Tensor) -> torch.Tensor | None:
    f = ctx.signals.fisher.get(name)
    return None if f is None else f.to(w.dtype)


class _Taylor:
    needs: ClassVar[frozenset[str]] = frozenset({"grad"})
    member_wise: ClassVar[bool] = True  # each member's row reads that member's weight and signals only

    def __init__(self, config: TaylorConfig):
        self.config = config


@register_estimator("taylor-vector", config=TaylorConfig)
class TaylorVector(_Taylor):
    """|sum of W*grad| over each unit (vector-wise first-order Taylor)."""

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        def values(name, axis, w):
            g = ctx.signals.grad.get(name)
            return None if g is None else (w, g)

        # signed terms cancel in the sum, so the products are taken exactly: in fp64 (a product
        # of two fp32 significands fits in fp64's), a block at a time
        return unit_sums(group, ctx, values, post=torch.abs, blockwise=lambda w, g: w.to(torch.float64, copy=True).mul_(g))


@register_estimator("taylor-element", config=TaylorConfig)
class TaylorElement(_Taylor):
    """Sum of |W*grad| over each unit (element-wise first-order Taylor)."""

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        def values(name, axis, w):
            g = _grad(ctx, name, w)
            return None if g is None else (w, g)

        return unit_sums(group, ctx, values, blockwise=lambda w, g: (w * g).abs_())


@register_estimator("taylor-second", config=TaylorConfig)
class TaylorSecond(_Taylor):
    """Sum of W*F*W/2 over each unit (element-wise second order, diagonal Fisher)."""

    needs = frozenset({"fisher"})

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        def values(name, axis, w):
            f = _fisher(ctx, name, w)
            return None if f is None else (w, f)

        return unit_sums(group, ctx, values, blockwise=lambda w, f: (w * f).mul_(w).mul_(0.5))


@register_estimator("taylor-mix", config=TaylorConfig)
class TaylorMix(_Taylor):
    """Sum of |W*grad - W*F*W/2| over each unit (LLM-Pruner's mix)."""

    needs = frozenset({"grad", "fisher"})

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        def values(name, axis, w):
            g, f = _grad(ctx, name, w), _fisher(ctx, name, w)
            return None if g is None or f is None else (w, g, f)

        def mix(w, g, f):
            return torch.mul(w, g).sub_((w * f).mul_(w).mul_(0.5)).abs_()

        return unit_sums(group, ctx, values, blockwise=mix)
