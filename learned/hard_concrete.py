"""The hard-concrete distribution (Louizos, Welling & Kingma 2018): gates in [0, 1] with mass at 0 and 1.

One gate per unit: ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)`` for ``u ~ U(0, 1)``,
stretched to ``(l, r)`` and clipped to ``[0, 1]``, so a gate is exactly 0 or 1 with positive
probability and the L0 norm (the number of open gates) has a differentiable expectation.
Defaults are the paper's (and Compresso's / CoFi's): ``beta = 2/3``, ``(l, r) = (-0.1, 1.1)``.

>>> import torch
>>> g = HardConcrete(4)
>>> g.prob_open().gt(0.99).all().item(), g.deterministic().eq(1).all().item()  # starts almost open
(True, True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

BETA = 2 / 3
LIMITS = (-0.1, 1.1)
LOG_ALPHA_RANGE = (-10.0, 10.0)
EPS = 1e-6


class HardConcrete(nn.Module):
    """``n`` hard-concrete gates with learnable ``log_alpha`` (float32), clamped to ``LOG_ALPHA_RANGE``.

    ``init_open`` is the probability that a gate is open (non-zero) at the start.
    """

    def __init__(self, n: int, init_open: float = 0.995, beta: float = BETA, limits: tuple[float, float] = LIMITS):
        super().__init__()
        if not 0.0 < init_open < 1.0:
            raise ValueError(f"init_open must be in (0, 1), got {init_open}")
        self.beta, (self.l, self.r) = beta, limits
        # prob_open = sigmoid(log_alpha - beta * log(-l / r))  =>  log_alpha = logit(p) + beta * log(-l / r)
        start = math.log(init_open / (1 - init_open)) + beta * math.log(-self.l / self.r)
        self.log_alpha = nn.Parameter(torch.full((n,), start, dtype=torch.float32))  # (n,)

    @torch.no_grad()
    def project(self) -> None:
        """Clamp ``log_alpha`` itself to ``LOG_ALPHA_RANGE`` (after an optimiser step): beyond it the clamped
        forward has no gradient, and a gate carried past it by momentum could never move again."""
        self.log_alpha.clamp_(*LOG_ALPHA_RANGE)

    def _log_alpha(self) -> torch.Tensor:
        return self.log_alpha.clamp(*LOG_ALPHA_RANGE)

    def sample(self, u: torch.Tensor | None = None) -> torch.Tensor:
        """Gates drawn with noise ``u`` (uniform in (0, 1); drawn from torch's generator when None), differentiable in log_alpha."""
        if u is None:
            u = torch.rand_like(self.log_alpha)
        u = u.clamp(EPS, 1 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self._log_alpha()) / self.beta)  # (n,)
        return (s * (self.r - self.l) + self.l).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        """The noise-free gates (the median of the stretched concrete), clipped: what evaluation uses."""
        return (torch.sigmoid(self._log_alpha()) * (self.r - self.l) + self.l).clamp(0.0, 1.0)

    def prob_open(self) -> torch.Tensor:
        """P(gate > 0) per gate: ``sigmoid(log_alpha - beta * log(-l / r))``, differentiable."""
        return torch.sigmoid(self._log_alpha() - self.beta * math.log(-self.l / self.r))

    def expected_l0(self) -> torch.Tensor:
        """The expected number of open gates."""
        return self.prob_open().sum()

    def forward(self) -> torch.Tensor:
        """Sampled gates in training mode, deterministic ones in eval mode."""
        return self.sample() if self.training else self.deterministic()
