"""learned/: hard-concrete gates and the expected parameter count of a gated model.

The distribution's values are recomputed here from the formulas of Louizos et al. (2018) with
numpy, not with the module's code; the expected size is checked against the real parameter
count of models the executor sliced with the same 0/1 gates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learned.expected_size import ExpectedSize
from learned.hard_concrete import HardConcrete
from pruners.pipeline import analyze, count_params
from pruners.slicing.executor import execute

from zoo import ARCHS, NEW_ARCHS, random_plan

BETA, L, R = 2 / 3, -0.1, 1.1


def logit(x):
    return np.log(x) - np.log1p(-x)


def test_a_sample_is_the_stretched_and_clipped_concrete():
    gates = HardConcrete(5)
    la = np.array([-3.0, -0.5, 0.0, 1.5, 4.0])
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor(la))
    u = np.array([0.01, 0.3, 0.5, 0.7, 0.999])
    s = 1 / (1 + np.exp(-(logit(u) + la) / BETA))
    want = np.clip(s * (R - L) + L, 0, 1)
    got = gates.sample(torch.tensor(u, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got[0] == 0.0 and got[-1] == 1.0  # exact zeros and ones occur


def test_the_open_probability_and_expected_l0_match_the_distribution():
    torch.manual_seed(0)
    gates = HardConcrete(4)
    la = np.array([-2.0, 0.0, 0.7, 3.0])
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor(la))
    # P(z > 0) = P(s > -l / (r - l)) = P(logit(u) > beta * logit(-l / (r - l)) - log_alpha)
    want = 1 - 1 / (1 + np.exp(-(BETA * logit(-L / (R - L)) - la)))
    np.testing.assert_allclose(gates.prob_open().detach().numpy(), want, rtol=1e-5)
    assert float(gates.expected_l0()) == pytest.approx(want.sum(), rel=1e-5)
    draws = torch.stack([gates.sample() for _ in range(40_000)])  # (40000, 4)
    np.testing.assert_allclose(draws.gt(0).float().mean(0).numpy(), want, atol=0.01)


def test_gates_start_almost_open_and_log_alpha_is_clamped():
    gates = HardConcrete(3, init_open=0.99)
    np.testing.assert_allclose(gates.prob_open().detach().numpy(), 0.99, rtol=1e-6)
    with torch.no_grad():
        gates.log_alpha.fill_(50.0)
    assert float(gates.prob_open()[0]) == pytest.approx(1 / (1 + math.exp(-(10 - BETA * math.log(-L / R)))))
    gates.eval()
    assert torch.equal(gates(), torch.ones(3))
    with pytest.raises(ValueError, match="init_open must be in"):
        HardConcrete(3, init_open=1.0)


CASES = [  # (architecture, kinds planned together)
    ("llama_gqa", ("kv_group", "mlp_channel")),
    ("llama_gqa", ("kv_group", "mlp_channel", "hidden_channel")),
    ("llama_mha", ("attention_head", "hidden_channel")),
    ("qwen2", ("kv_group", "mlp_channel", "hidden_channel")),
    ("phi3", ("mlp_channel", "hidden_channel")),
    ("gpt2", ("attention_head", "mlp_channel", "hidden_channel")),
    ("falcon", ("attention_head", "mlp_channel")),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arch, kinds", CASES)
def test_expected_size_at_0_1_gates_is_the_sliced_models_parameter_count(arch, kinds, seed):
    model = {**ARCHS, **NEW_ARCHS}[arch].build()
    tr, groups = analyze(model)
    keep = {}
    for kind in kinds:
        keep |= random_plan(groups, kind, seed)
    chosen = [g for g in groups if g.id in keep]
    probs = {g.id: torch.tensor([1.0 if u in set(keep[g.id]) else 0.0 for u in range(g.n_units)]) for g in chosen}
    size = ExpectedSize(chosen, count_params(model))
    pruned, _ = execute(model, tr, groups, keep)
    assert float(size(probs)) == count_params(pruned) < count_params(model)
    assert float(size({})) == count_params(model)


def test_expected_size_is_differentiable_and_couples_kinds():
    """A hidden channel costs less once MLP channels are expected to go: the gradient says so."""
    model = ARCHS["llama_gqa"].build()
    _, groups = analyze(model)
    chosen = [g for g in groups if g.kind in ("mlp_channel", "hidden_channel")]
    hidden = next(g for g in chosen if g.kind == "hidden_channel")
    grads = []
    for mlp_open in (1.0, 0.5):
        probs = {g.id: torch.full((g.n_units,), mlp_open if g.kind == "mlp_channel" else 1.0, requires_grad=True)
                 for g in chosen}
        ExpectedSize(chosen, count_params(model))(probs).backward()
        grads.append(float(probs[hidden.id].grad[0]))
    assert grads[0] > grads[1] > 0


def test_hard_concrete_gates_on_the_model_are_the_masked_plan_at_0_1_and_train():
    from learned.gates import HardConcreteGates
    from pruners import attach_gate_source

    from zoo import fix_gates, logits, masked_reference

    model = ARCHS["llama_gqa"].build()
    tr, groups = analyze(model)
    keep = random_plan(groups, "kv_group") | random_plan(groups, "mlp_channel")
    chosen = [g for g in groups if g.id in keep]
    gated = ARCHS["llama_gqa"].build()  # the same weights
    source = HardConcreteGates(chosen)
    attach_gate_source(gated, chosen, source)
    assert {n for n, _ in gated.named_parameters() if "log_alpha" in n}  # the gates are the model's parameters
    fix_gates(source, chosen, keep)
    source.eval()
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    want = logits(masked_reference(model, groups, keep), ids)
    torch.testing.assert_close(logits(gated, ids), want, rtol=0, atol=1e-5)
    pruned, _ = execute(model, tr, groups, keep)
    torch.testing.assert_close(logits(pruned, ids), want, rtol=0, atol=1e-5)
    source.train()
    with torch.no_grad():
        for g in chosen:
            source.gates[g.id].log_alpha.fill_(0.5)
    source.resample()
    gated(ids).logits.float().pow(2).mean().backward()
    assert all(source.gates[g.id].log_alpha.grad.abs().sum() > 0 for g in chosen)


def test_the_lagrangian_drives_the_expected_sparsity_to_the_target():
    """Gates alone (no task loss), 100 units of one parameter each: ascent on the multipliers and descent on
    the gates bring the expected sparsity within 2 points of a 30% target."""
    from learned.lagrangian import Lagrangian, ascend, ramped_target

    torch.manual_seed(0)
    gates, lag = HardConcrete(100), Lagrangian()
    opt = torch.optim.Adam([{"params": gates.parameters(), "lr": 0.05}, {"params": lag.parameters(), "lr": 0.05}])
    for step in range(400):
        sparsity = 1 - gates.prob_open().mean()
        loss = lag(sparsity, ramped_target(step, 0.3, warmup=100))
        opt.zero_grad()
        loss.backward()
        ascend(lag)
        opt.step()
    assert abs(float(1 - gates.prob_open().mean()) - 0.3) < 0.02
    assert float(lag.lambda1) != 0.0
