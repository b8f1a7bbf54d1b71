"""Activation-based importance without gradients: Wanda-sp and FLAP's fluctuation metric.

Both score a weight through the input feature it reads, so only members whose pruned axis is
a layer's **input** axis score (``o_proj``/``down_proj`` columns for heads and MLP channels,
every projection's input columns for hidden channels); other members score zero and the
aggregation sums what the consumers say.

* ``wanda-sp``: ``||X_j|| * sum_i |W_ij|`` per input feature ``j`` (Wanda, structured);
* ``flap``: ``Var(X_j) * sum_i W_ij^2`` (FLAP's fluctuation of the input channel).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from depgraph.groups import Group

from .registry import ScoringContext, register_estimator, unit_sums


class ActivationConfig(BaseModel):
    """Activation estimators take no options; calibration is configured for the whole run."""

    model_config = ConfigDict(extra="forbid")


def _along_input(ctx: ScoringContext, name: str, axis: int, stat: torch.Tensor | None, w: torch.Tensor):
    """``stat`` (per input feature) shaped to broadcast against ``w``, or None if ``axis`` is not the input axis.

    (Expanded to ``w``'s shape, a view, it is cut into the same blocks as ``w`` by :func:`unit_sums`.)
    """
    if stat is None or ctx.signals.input_axis.get(name) != axis:
        return None
    shape = [1] * w.ndim
    shape[axis] = -1
    return stat.to(w.dtype).reshape(shape)


@register_estimator("wanda-sp", config=ActivationConfig)
class WandaSP:
    """||X_j|| * |W_ij| summed over each unit's input features (no gradients)."""

    needs: ClassVar[frozenset[str]] = frozenset({"activations"})

    def __init__(self, config: ActivationConfig):
        self.config = config

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        def values(name, axis, w):
            norm = _along_input(ctx, name, axis, ctx.signals.act_norm(name), w)
            return None if norm is None else (w, norm.expand_as(w))

        return unit_sums(group, ctx, values, blockwise=lambda w, norm: w.abs().mul_(norm))


@register_estimator("flap", config=ActivationConfig)
class Flap:
    """Var(X_j) * ||W_:j||^2 summed over each unit's input features (FLAP fluctuation)."""

    needs: ClassVar[frozenset[str]] = frozenset({"activations"})

    def __init__(self, config: ActivationConfig):
        self.config = config

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        def values(name, axis, w):
            var = _along_input(ctx, name, axis, ctx.signals.act_var(name), w)
            return None if var is None else (w, var.expand_as(w))

        return unit_sums(group, ctx, values, blockwise=lambda w, var: (w * w).mul_(var))
