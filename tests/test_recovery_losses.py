"""The recovery losses against hand computations on fixed logits."""

from __future__ import annotations

import math

import pytest
import torch

from recovery import IGNORE, kd_loss, lm_loss

# one sequence of 3 positions over a vocabulary of 3; position t predicts labels[t + 1]
STUDENT = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, -2.0, 0.0]]])
TEACHER = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
LABELS = torch.tensor([[IGNORE, 1, IGNORE]])  # only position 0's prediction (of token 1) carries a label


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_loss_equals_a_hand_computation():
    T, w = 2.0, 0.3
    s, t = [1.0, 0.0, -1.0], [0.0, 1.0, 0.0]  # position 0 of student and teacher: the only labelled one
    ps, pt = softmax([x / T for x in s]), softmax([x / T for x in t])
    kl = sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
    ce = -math.log(softmax(s)[1])
    want = w * T * T * kl + (1 - w) * ce
    got = kd_loss(STUDENT, TEACHER, LABELS, temperature=T, weight=w).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_kd_loss_is_zero_kl_for_the_teacher_itself_and_pure_cross_entropy_at_weight_0():
    labels = torch.tensor([[5, 1, 2]])
    assert kd_loss(TEACHER, TEACHER, labels, weight=1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(STUDENT, TEACHER, labels, weight=0.0).item() == pytest.approx(lm_loss(STUDENT, labels).item())


def test_lm_loss_averages_over_labelled_next_tokens_only():
    labels = torch.tensor([[IGNORE, 1, 0]])  # positions 0 and 1 predict tokens 1 and 0; position 2 predicts nothing
    want = (-math.log(softmax([1.0, 0.0, -1.0])[1]) - math.log(softmax([0.5, 0.5, 0.0])[0])) / 2
    assert lm_loss(STUDENT, labels).item() == pytest.approx(want, rel=1e-6)


def test_kd_loss_refuses_logits_of_different_vocabularies():
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(STUDENT, TEACHER[..., :2], LABELS)
