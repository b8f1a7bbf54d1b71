"""Random importance: the baseline every criterion must beat."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from depgraph.groups import Group

from .registry import ScoringContext, register_estimator


class RandomConfig(BaseModel):
    """Random scores come from the run's seeded generator."""

    model_config = ConfigDict(extra="forbid")


@register_estimator("random", config=RandomConfig)
class Random:
    """Uniform random scores per unit (seeded, deterministic)."""

    needs: frozenset[str] = frozenset()

    def __init__(self, config: RandomConfig):
        self.config = config

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        """One seeded draw per unit, the same for every member: ``(n_members, n_units)``."""
        row = torch.rand(group.n_units, generator=ctx.generator, dtype=torch.float64)  # (n_units,)
        return row.expand(len(group.members), -1)
