"""Hard-concrete gates as a gate source for :func:`pruners.attach_gate_source`: one draw per step, shared by all members.

>>> import numpy as np
>>> from depgraph.groups import Group, Member
>>> g = Group("mlp_channel@0", "mlp_channel", 0, 3, [Member("w", 0, np.arange(3), shape=(3, 2))], 2, True, ())
>>> gates = HardConcreteGates([g])
>>> z = gates.resample()["mlp_channel@0"]
>>> gates("mlp_channel@0") is z, z.shape  # every member reads the same draw until the next resample()
(True, torch.Size([3]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from depgraph.groups import Group

from .hard_concrete import HardConcrete


class HardConcreteGates(nn.Module):
    """One :class:`~learned.hard_concrete.HardConcrete` per group (by group id).

    In training mode ``source(group_id)`` returns the draw of the last :meth:`resample` (drawn on
    first use if there is none); in eval mode the deterministic gates.
    """

    def __init__(self, groups: Sequence[Group], init_open: float = 0.995):
        super().__init__()
        self.gates = nn.ModuleDict({g.id: HardConcrete(g.n_units, init_open) for g in groups})
        self._draw: dict[str, torch.Tensor] = {}

    def resample(self) -> dict[str, torch.Tensor]:
        """Draw new gates for every group (call once per training step, before the forward pass)."""
        self._draw = {gid: gate.sample() for gid, gate in self.gates.items()}
        return self._draw

    def forward(self, group_id: str) -> torch.Tensor:
        if not self.training:
            return self.gates[group_id].deterministic()
        if group_id not in self._draw:
            self.resample()
        return self._draw[group_id]

    def project(self) -> None:
        """Keep every ``log_alpha`` in range (call after each optimiser step)."""
        for gate in self.gates.values():
            gate.project()

    def prob_open(self) -> dict[str, torch.Tensor]:
        """P(gate > 0) per unit of every group: what :class:`~learned.expected_size.ExpectedSize` takes."""
        return {gid: gate.prob_open() for gid, gate in self.gates.items()}
