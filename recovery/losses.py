"""The losses of recovery: next-token cross-entropy on labelled tokens, and distillation from a teacher.

Both take logits aligned with the labels of :mod:`recovery.data` (``labels[:, t]`` is the token
at ``t``; position ``t`` predicts ``t + 1``) and compute in float32 whatever the model's dtype.

>>> import math
>>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
>>> round(lm_loss(logits, torch.tensor([[0, 1, 2]])).item(), 4) == round(math.log(4), 4)
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and their targets: ``logits[:, :-1]`` against ``labels[:, 1:]``, flattened, float32."""
    return logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten()  # (B*(T-1), V), (B*(T-1),)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose label is not ``IGNORE``.

    ``logits`` is ``(B, T, V)``, ``labels`` ``(B, T)``.
    """
    pred, target = _shift(logits, labels)
    return F.cross_entropy(pred, target, ignore_index=IGNORE)


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 2.0, weight: float = 0.5
) -> torch.Tensor:
    """``weight * T^2 * KL(p_teacher || p_student) + (1 - weight) * cross-entropy``, over the labelled tokens.

    ``p`` is the softmax of the logits divided by the temperature ``T``; the KL (forward: the
    teacher's distribution is the reference) is summed over the vocabulary and averaged over the
    positions whose next token carries a label, the same positions as the cross-entropy.  The
    ``T^2`` factor keeps the gradient's scale independent of ``T`` (Hinton et al., 2015).
    ``student`` and ``teacher`` are ``(B, T, V)`` with the same vocabulary.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in shape")
    s, target = _shift(student, labels)
    t, _ = _shift(teacher.detach(), labels)
    keep = target != IGNORE  # (N,)
    log_p_s = F.log_softmax(s[keep] / temperature, dim=-1)  # (n, V)
    log_p_t = F.log_softmax(t[keep] / temperature, dim=-1)  # (n, V)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    ce = F.cross_entropy(s, target, ignore_index=IGNORE)
    return weight * temperature**2 * kl + (1 - weight) * ce

