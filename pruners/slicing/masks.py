"""A plan on the dense model: removed units as zero masks, or one learnable gate per unit.

Slicing (:func:`pruners.slicing.execute`) makes a smaller model; these functions keep the
model's shapes and act on the same member slices instead:

- :func:`masked_copy` zeroes every member slice of every removed unit -- the masked-dense
  oracle (for exact kinds the sliced model computes the same logits) and the masked baselines
  of ``benchmarks/ablation.py``;
- :func:`attach_gates` multiplies every member slice of unit ``u`` by a learnable gate
  ``g[u]`` (``torch.nn.utils.parametrize``), for learned pruning: all gates 1 is the dense
  model, the gates of the removed units at 0 is :func:`masked_copy` of that plan;
  :func:`attach_gate_source` reads the gates from any module instead (sampled hard-concrete gates).

>>> from torch import nn
>>> from depgraph.groups import Group, Member
>>> lin = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 2, bias=False))
>>> g = Group("mlp_channel@0", "mlp_channel", 0, 3, [Member("0.weight", 0, np.arange(3)),
...           Member("1.weight", 1, np.arange(3))], unit_params=4, mask_equivalent=True, factors=())
>>> masked = masked_copy(lin, removed_positions([g], {"mlp_channel@0": [0, 2]}))
>>> masked[0].weight[1].abs().sum().item(), masked[1].weight[:, 1].abs().sum().item()
(0.0, 0.0)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from depgraph.groups import Group

Drop = tuple[str, int, np.ndarray]  # (parameter or buffer name, axis, positions to zero)


def removed_positions(groups: Sequence[Group], keep: Mapping[str, Sequence[int]]) -> list[Drop]:
    """Every member slice of every unit a plan removes: ``(tensor, axis, positions)``.

    ``keep`` maps group ids to kept units (as :func:`pruners.slicing.execute` takes it);
    groups it does not name are untouched.
    """
    drops = []
    for g in groups:
        if g.id not in keep:
            continue
        gone = np.setdiff1d(np.arange(g.n_units), np.asarray(list(keep[g.id]), dtype=np.int64))
        for m in g.members:
            pos = np.flatnonzero(np.isin(m.unit_of, gone))
            if len(pos):
                drops.append((m.param, m.axis, pos))
    return drops


def masked_copy(model: nn.Module, drops: Sequence[Drop]) -> nn.Module:
    """A deep copy of ``model`` with the given positions of its parameters and buffers zeroed."""
    out = copy.deepcopy(model)
    tensors = dict(out.named_parameters())
    tensors.update(dict(out.named_buffers()))
    with torch.no_grad():
        for name, axis, pos in drops:
            index = torch.as_tensor(pos, dtype=torch.long, device=tensors[name].device)
            tensors[name].index_fill_(axis, index, 0.0)
    return out


class GateSource(Protocol):
    """Where gates read their values: ``source(group_id)`` is that group's ``(n_units,)`` gate tensor.

    A module (so its parameters are the model's, and move with it); every member slice of a
    group reads the same call, so a source that samples (hard-concrete gates) must hold one draw
    per step and return it to every member.
    """

    def __call__(self, group_id: str) -> torch.Tensor: ...


class ParameterGates(nn.Module):
    """The plain gate source: one float32 ``(n_units,)`` parameter per group, initialised to ``init``."""

    def __init__(self, groups: Sequence[Group], init: float = 1.0, device: torch.device | None = None):
        super().__init__()
        self.gates = nn.ParameterDict(
            {g.id: nn.Parameter(torch.full((g.n_units,), float(init), dtype=torch.float32, device=device)) for g in groups}
        )

    def forward(self, group_id: str) -> torch.Tensor:
        return self.gates[group_id]


class UnitGate(nn.Module):
    """``W * g[unit_of]`` along one axis of ``W``, ``g = source(group_id)``; positions of no unit are left as they are.

    The source is shared by every member of every group, so one gate scales a unit everywhere.
    """

    def __init__(self, source: nn.Module, group_id: str, unit_of: np.ndarray, axis: int, ndim: int):
        super().__init__()
        self.source, self.group_id = source, group_id
        self.axis, self.ndim = axis, ndim
        index = torch.as_tensor(np.where(unit_of >= 0, unit_of, 0), dtype=torch.long)
        self.register_buffer("index", index, persistent=False)  # (axis_len,)
        self.register_buffer("owned", torch.as_tensor(unit_of >= 0), persistent=False)  # (axis_len,)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        gate = self.source(self.group_id)  # (n_units,)
        scale = torch.where(self.owned, gate[self.index].to(w.dtype), torch.ones((), dtype=w.dtype, device=w.device))
        shape = [1] * self.ndim
        shape[self.axis] = -1
        return w * scale.view(shape)  # broadcast along ``axis``


def attach_gates(model: nn.Module, groups: Sequence[Group], init: float = 1.0) -> dict[str, nn.Parameter]:
    """Give every unit of ``groups`` a learnable gate on ``model`` itself (in place); return them by group id.

    Each member tensor becomes ``W * g[unit]`` along its member axis through
    ``torch.nn.utils.parametrize`` (tied weights stay tied: both modules read the same
    original).  Gates are float32 ``(n_units,)`` parameters initialised to ``init``
    (:class:`ParameterGates`; :func:`attach_gate_source` takes any other source).
    :func:`remove_gates` takes the parametrizations off again.
    """
    tensors = dict(model.named_parameters(remove_duplicate=False))
    device = tensors[groups[0].members[0].param].device if groups else None
    source = ParameterGates(groups, init, device)
    attach_gate_source(model, groups, source)
    return dict(source.gates)


def attach_gate_source(model: nn.Module, groups: Sequence[Group], source: nn.Module) -> None:
    """Multiply every member slice of every unit of ``groups`` by the gate ``source(group.id)`` gives (in place).

    ``source`` is a module (see :class:`GateSource`), registered under every gated tensor's
    parametrization, so its parameters are found, moved and trained with the model's.
    """
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers()))
    for g in groups:
        device = tensors[g.members[0].param].device
        for m in g.members:
            mod_path, _, attr = m.param.rpartition(".")
            owner = model.get_submodule(mod_path) if mod_path else model
            ndim = getattr(owner, attr).ndim
            gate = UnitGate(source, g.id, m.unit_of, m.axis, ndim)
            gate.index, gate.owned = gate.index.to(device), gate.owned.to(device)
            parametrize.register_parametrization(owner, attr, gate, unsafe=True)


def remove_gates(model: nn.Module, bake: bool = False) -> None:
    """Remove every parametrization :func:`attach_gates` added; ``bake=True`` keeps the gated values in the weights."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=bake)
