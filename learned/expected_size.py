"""The expected number of parameters a gated model keeps: differentiable in the gates' open probabilities.

Each tensor the groups cut keeps, along each cut axis, the positions whose units stay; its size is
the product of those kept counts (as :class:`depgraph.groups.ParamCount` counts a plan exactly).
With unit ``u`` of group ``g`` open with probability ``p[g][u]``, a position owned by units
``u1, u2, ...`` (KV group and query head of one row) stays with probability ``p1 * p2 * ...``, an
axis keeps their sum in expectation, and a tensor the product over its axes: so the cost of a head
or MLP channel scales with the expected hidden width, and with probabilities fixed to 0/1 the
count is the real parameter count of the sliced model.  Tied weights count once (the groups name
the canonical tensor); tensors no group cuts count in full.

>>> import numpy as np, torch
>>> from depgraph.groups import Group, Member
>>> w = (4, 3)  # 4 MLP rows x 3 hidden columns
>>> mlp = Group("m", "mlp_channel", 0, 4, [Member("w", 0, np.arange(4), shape=w)], 3, True, ())
>>> hidden = Group("h", "hidden_channel", None, 3, [Member("w", 1, np.arange(3), shape=w)], 4, False, ())
>>> size = ExpectedSize([mlp, hidden], total_params=12)
>>> float(size({"m": torch.tensor([1.0, 1, 0, 0]), "h": torch.tensor([1.0, 1, 0])}))  # 2 rows x 2 columns
4.0
>>> float(size({"m": torch.full((4,), 0.5), "h": torch.ones(3)}))  # 2 rows expected x 3 columns
6.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from depgraph.groups import Group


class ExpectedSize:
    """``size(probs)``: the expected parameters kept when unit ``u`` of group ``id`` stays with ``probs[id][u]``.

    ``total_params`` is the model's parameter count (tied weights once); ``None`` counts only the
    tensors the groups cut (one layer's share, say).  Groups missing from ``probs`` are kept whole.
    """

    def __init__(self, groups: Sequence[Group], total_params: int | None = None):
        self.shapes: dict[str, tuple[int, ...]] = {}
        # (tensor, axis) -> [(group id, unit index per position (-1: not owned))]
        self.axes: dict[tuple[str, int], list[tuple[str, np.ndarray]]] = {}
        for g in groups:
            for m in g.members:
                if m.kind != "param":
                    continue
                if not m.shape:
                    raise ValueError(f"group {g.id}: member {m.param} has no recorded shape; trace the model to get one")
                self.shapes[m.param] = tuple(m.shape)
                self.axes.setdefault((m.param, m.axis), []).append((g.id, np.asarray(m.unit_of)))
        self.cut = sum(int(np.prod(shape)) for shape in self.shapes.values())  # parameters of the tensors cut
        self.total = self.cut if total_params is None else int(total_params)

    def __call__(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ref = next(iter(probs.values()), torch.zeros(()))
        kept_total = torch.zeros((), dtype=torch.float64, device=ref.device)
        full = 0
        for name, shape in self.shapes.items():
            size = torch.ones((), dtype=torch.float64, device=ref.device)
            for axis, extent in enumerate(shape):
                owners = self.axes.get((name, axis))
                if not owners:
                    size = size * extent
                    continue
                keep = torch.ones(extent, dtype=torch.float64, device=ref.device)  # (extent,)
                for gid, unit_of in owners:
                    if gid not in probs:
                        continue
                    owned = torch.as_tensor(unit_of >= 0, device=ref.device)
                    index = torch.as_tensor(np.where(unit_of >= 0, unit_of, 0), device=ref.device)
                    p = probs[gid].to(torch.float64)[index]  # (extent,)
                    keep = keep * torch.where(owned, p, torch.ones_like(p))
                size = size * keep.sum()
            kept_total = kept_total + size
            full += int(np.prod(shape))
        return self.total - full + kept_total
