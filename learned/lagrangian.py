"""The size constraint of learned pruning: a Lagrangian on the expected sparsity, its multipliers learned by ascent.

``penalty = lambda1 * (s - t) + lambda2 * (s - t) ** 2`` where ``s`` is the expected sparsity (the
fraction of parameters the gates are expected to remove) and ``t`` the target, ramped from 0 to
its final value over a warm-up (CoFi, Compresso).  The gates descend on the penalty; the
multipliers ascend (:func:`ascend` flips their gradients before the optimizer step), so any gap
between ``s`` and ``t`` makes the penalty grow until the gates close it.

>>> import torch
>>> lag = Lagrangian()
>>> with torch.no_grad():
...     _ = lag.lambda1.fill_(2.0), lag.lambda2.fill_(3.0)
>>> round(float(lag(torch.tensor(0.3), 0.5)), 6)  # 2 * -0.2 + 3 * 0.04
-0.28
>>> [ramped_target(step, 0.5, warmup=10) for step in (0, 5, 10, 20)]
[0.0, 0.25, 0.5, 0.5]
"""

from __future__ import annotations

import torch
from torch import nn


class Lagrangian(nn.Module):
    """The two multipliers of each of ``n`` constraints (float32, starting at 0) and the penalty they weigh.

    ``n = 1``: one global constraint; ``n`` layers: one per layer (``sparsity`` is then ``(n,)``),
    the penalties summed.
    """

    def __init__(self, n: int = 1, lambda2: float = 0.0):
        super().__init__()
        shape = () if n == 1 else (n,)
        self.lambda1 = nn.Parameter(torch.zeros(shape, dtype=torch.float32))
        self.lambda2 = nn.Parameter(torch.full(shape, float(lambda2), dtype=torch.float32))

    def forward(self, sparsity: torch.Tensor, target: float) -> torch.Tensor:
        gap = sparsity - target  # () or (n,)
        return (self.lambda1 * gap + self.lambda2 * gap * gap).sum()


def ascend(lagrangian: Lagrangian) -> None:
    """Turn the multipliers' gradients into ascent directions (call after ``backward``, before the step)."""
    for p in lagrangian.parameters():
        if p.grad is not None:
            p.grad.neg_()


def ramped_target(step: int, final: float, warmup: int) -> float:
    """The target sparsity at ``step``: linear from 0 to ``final`` over ``warmup`` steps, then ``final``."""
    if warmup <= 0 or step >= warmup:
        return final
    return final * step / warmup
