"""Magnitude importance: the L1 or L2 norm of each unit's weights."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from depgraph.groups import Group

from .registry import ScoringContext, member_reduce, register_estimator


class MagnitudeConfig(BaseModel):
    """Magnitude estimators take no options."""

    model_config = ConfigDict(extra="forbid")


@register_estimator("l1", config=MagnitudeConfig)
class L1:
    """Sum of absolute weights of the unit in each member."""

    needs: frozenset[str] = frozenset()

    def __init__(self, config: MagnitudeConfig):
        self.config = config

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        return member_reduce(group, ctx, torch.abs)


@register_estimator("l2", config=MagnitudeConfig)
class L2:
    """Euclidean norm of the unit's weights in each member."""

    needs: frozenset[str] = frozenset()

    def __init__(self, config: MagnitudeConfig):
        self.config = config

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        return member_reduce(group, ctx, torch.square).sqrt()
