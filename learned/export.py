"""From trained gates to a really smaller model: deterministic keep, adapters merged, sliced, norms matched.

Per gated group the export keeps exactly as many units as the gates expect to stay open
(``round(sum P(open))``, at least ``min_units``), the ones with the largest log-alpha, with
their gates at exactly 1; the rest are dropped.  Then the parametrizations come off, LoRA is
merged into the weights, the executor slices the merged model as it slices any plan, and the
norms over the hidden width are matched (:mod:`learned.norms`), so the sliced model computes what
the gated model computes with those 0/1 gates.

>>> import numpy as np
>>> from depgraph.groups import Group, Member
>>> from learned.gates import HardConcreteGates
>>> g = Group("m", "mlp_channel", 0, 4, [Member("w", 0, np.arange(4), shape=(4, 2))], 2, True, ())
>>> gates = HardConcreteGates([g])
>>> with torch.no_grad():
...     _ = gates.gates["m"].log_alpha.copy_(torch.tensor([5.0, -9.0, 4.0, -9.0]))
>>> kept_units(gates, [g])  # two gates expected open: the two largest log-alphas
{'m': [0, 2]}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from depgraph.groups import Group
from pruners import execute, remove_gates
from recovery import merge_adapters

from .gates import HardConcreteGates
from .norms import match_hidden_norms


def kept_units(gates: HardConcreteGates, groups: Sequence[Group], min_units: int = 1, round_to: int = 1) -> dict[str, list[int]]:
    """Per group, the top-``k`` units by log-alpha, ``k`` the expected number of open gates rounded (to a
    multiple of ``round_to``, at least ``min_units``); groups that keep every unit are left out."""
    keep = {}
    for g in groups:
        gate = gates.gates[g.id]
        k = int(round(float(gate.expected_l0().detach()) / round_to)) * round_to
        k = min(g.n_units, max(min_units, round_to, k))
        if k == g.n_units:
            continue
        order = torch.argsort(-gate.log_alpha.detach().cpu(), stable=True)  # ties: the lower index first
        keep[g.id] = sorted(order[:k].tolist())
    return keep


def export(peft_model, trace, groups: Sequence[Group], keep: dict[str, list[int]]):
    """The sliced model of a gated, adapted model: ``(model, record, norm mismatches)``.

    ``peft_model`` (its gates attached to its base model) is consumed: the gates are removed
    and the adapters merged in place.  ``trace`` and ``groups`` are the source model's.
    """
    remove_gates(peft_model.get_base_model())  # W, A and B as trained; the keep below decides
    merged: nn.Module = merge_adapters(peft_model)
    pruned, record = execute(merged, trace, groups, keep)
    norms = match_hidden_norms(merged, pruned, groups, keep)
    return pruned, record, norms
