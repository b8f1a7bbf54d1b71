"""Calibration-based estimators against scores computed independently in the test.

The model is a tiny LM (embed -> up -> relu -> down -> head).  Expected values come from
per-sample gradients taken with ``torch.autograd.grad`` and activations recomputed by hand,
not from the library's signal collection.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from depgraph import meta_copy, trace
from depgraph.groups import Group, Member, find_groups
from pruners.config import PruneConfig
from pruners.errors import UsageError
from pruners.importance import ScoringContext, collect_signals, make_estimator, needs_of, unit_scores


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(7, 4)
        self.up = nn.Linear(4, 5, bias=False)
        self.down = nn.Linear(5, 4, bias=False)
        self.head = nn.Linear(4, 7, bias=False)

    def forward(self, idx):
        h = self.embed(idx)
        return self.head(h + self.down(torch.relu(self.up(h))))


SAMPLES = [torch.tensor([[1, 4, 2, 6, 3]]), torch.tensor([[5, 0, 3, 3, 1]]), torch.tensor([[2, 2, 6, 0, 4]])]


def loss_of(model, ids):
    logits = model(ids)
    return nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])


@pytest.fixture(scope="module")
def setup():
    model = TinyLM().eval()
    group = next(g for g in find_groups(trace(model)) if g.kind == "mlp_channel")
    assert [(m.param, m.axis) for m in group.members] == [("up.weight", 0), ("down.weight", 1)]
    # independent references: per-sample gradients and the down layer's inputs
    per_sample = [torch.autograd.grad(loss_of(model, ids), [model.up.weight, model.down.weight]) for ids in SAMPLES]
    G = [torch.stack([g[k] for g in per_sample]).mean(0).double() for k in range(2)]
    F = [torch.stack([g[k] ** 2 for g in per_sample]).mean(0).double() for k in range(2)]
    with torch.no_grad():
        X = torch.cat([torch.relu(model.up(model.embed(ids)))[0] for ids in SAMPLES]).double()  # (tokens, 5)
    W = [model.up.weight.detach().double(), model.down.weight.detach().double()]
    return model, group, G, F, X, W


def scores(model, group, name):
    est = make_estimator(name)
    sig = collect_signals(model, SAMPLES, needs_of(est), progress=False)
    return est.score(group, ScoringContext.for_model(model, 0, sig)).numpy()


def per_unit(up_vals, down_vals, post=lambda v: v):
    """Rows for the two members: up's unit u is row u, down's unit u is column u."""
    return np.stack([post(up_vals.sum(1)).numpy(), post(down_vals.sum(0)).numpy()])


def test_taylor_vector(setup):
    model, group, G, F, X, W = setup
    expect = per_unit(W[0] * G[0], W[1] * G[1], post=torch.abs)
    assert np.allclose(scores(model, group, "taylor-vector"), expect, rtol=1e-5, atol=1e-9)


def test_taylor_element(setup):
    model, group, G, F, X, W = setup
    expect = per_unit((W[0] * G[0]).abs(), (W[1] * G[1]).abs())
    assert np.allclose(scores(model, group, "taylor-element"), expect, rtol=1e-5, atol=1e-9)


def test_taylor_second(setup):
    model, group, G, F, X, W = setup
    expect = per_unit(0.5 * W[0] * F[0] * W[0], 0.5 * W[1] * F[1] * W[1])
    assert np.allclose(scores(model, group, "taylor-second"), expect, rtol=1e-5, atol=1e-12)


def test_taylor_mix(setup):
    model, group, G, F, X, W = setup
    mix = [(W[k] * G[k] - 0.5 * W[k] * F[k] * W[k]).abs() for k in range(2)]
    assert np.allclose(scores(model, group, "taylor-mix"), per_unit(*mix), rtol=1e-5, atol=1e-9)


def test_vector_and_element_differ(setup):
    model, group, *_ = setup
    assert not np.allclose(scores(model, group, "taylor-vector"), scores(model, group, "taylor-element"))


def test_wanda_sp(setup):
    model, group, G, F, X, W = setup
    norms = X.pow(2).sum(0).sqrt()  # ||X_u|| over all calibration tokens
    expect = np.stack([np.full(5, np.nan), (W[1].abs().sum(0) * norms).numpy()])  # up's pruned axis is not its input
    assert np.allclose(scores(model, group, "wanda-sp"), expect, rtol=1e-5, equal_nan=True)


def test_flap(setup):
    model, group, G, F, X, W = setup
    var = X.var(0, unbiased=False)
    expect = np.stack([np.full(5, np.nan), ((W[1] ** 2).sum(0) * var).numpy()])
    assert np.allclose(scores(model, group, "flap"), expect, rtol=1e-5, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("name", ["taylor-vector", "taylor-element", "taylor-second", "taylor-mix", "wanda-sp", "flap", "l1", "l2"])
def test_scores_summed_in_blocks_equal_scores_summed_whole(setup, name, monkeypatch):
    """Blocks of 2 slices (the weights are 4 and 5 wide): the estimator's products are taken a block at a time."""
    model, group, *_ = setup
    whole = scores(model, group, name)
    monkeypatch.setattr("pruners.importance.registry._BLOCK", 2)
    assert np.allclose(scores(model, group, name), whole, rtol=1e-6, atol=1e-12, equal_nan=True)


def test_values_as_a_tuple_need_a_blockwise_function_and_one_shape(setup):
    from pruners.importance import unit_sums

    model, group, *_ = setup
    ctx = ScoringContext.for_model(model, 0, None)
    with pytest.raises(ValueError, match="blockwise function and one shape"):
        unit_sums(group, ctx, lambda name, axis, w: (w, w))
    with pytest.raises(ValueError, match=r"\[\(5, 4\), \(4, 5\)\]"):
        unit_sums(group, ctx, lambda name, axis, w: (w, w.T), blockwise=torch.mul)


@pytest.mark.parametrize("name", ["wanda-sp", "flap"])
@pytest.mark.parametrize("aggregation", ["sum", "mean", "max", "prod", "last"])
def test_unscored_members_are_left_out_of_the_aggregation(setup, name, aggregation):
    # activation criteria score only the member whose input axis is pruned (down); every
    # aggregation, prod included, must then give down's row, not a product with an empty row
    model, group, *_ = setup
    est = make_estimator(name)
    ctx = ScoringContext.for_model(model, 0, collect_signals(model, SAMPLES, needs_of(est), progress=False))
    expect = scores(model, group, name)[1]
    assert np.allclose(unit_scores(group, est, ctx, aggregation), expect, rtol=1e-12)


def test_a_group_without_any_scored_member_is_refused_naming_group_and_estimator(setup):
    # no activation statistics: wanda-sp applies to no member; the group must not score 0
    # everywhere (the planner would then prune by unit index)
    model, group, *_ = setup
    est = make_estimator("wanda-sp")
    with pytest.raises(UsageError, match=r"importance 'wanda-sp' scores none of the 2 members of group mlp_channel@all"):
        unit_scores(group, est, ScoringContext.for_model(model, 0))


def test_score_groups_refuses_a_group_no_member_of_which_is_scored(setup):
    from pydantic import BaseModel

    from pruners.importance import ESTIMATORS, register_estimator
    from pruners.pipeline import score_groups

    class NoOptions(BaseModel):
        pass

    @register_estimator("test-abstains", config=NoOptions)
    class Abstains:
        """Scores nothing (a plugin that does not apply to MLP channels)."""

        needs = frozenset()

        def __init__(self, config):
            self.config = config

        def score(self, group, ctx):
            return torch.full((len(group.members), group.n_units), torch.nan, dtype=torch.float64)

    model, group, *_ = setup
    try:
        with pytest.raises(UsageError, match=r"importance 'test-abstains' scores none of the 2 members of group mlp_channel@all"):
            score_groups(model, [group], PruneConfig(ratio=0.5, importance="test-abstains"), progress=False)
    finally:
        ESTIMATORS.pop("test-abstains")


@pytest.mark.parametrize("name", ["l1", "l2", "taylor-element", "wanda-sp"])
def test_a_member_without_weights_is_an_error_naming_it(setup, name):
    # a meta copy holds no weights: every estimator that reads them must say so, not give NaN rows
    model, group, *_ = setup
    est = make_estimator(name)
    sig = collect_signals(model, SAMPLES, needs_of(est), progress=False)
    with pytest.raises(UsageError, match=r"member up\.weight of group mlp_channel@all has no weights \(it is on the meta device\)"):
        est.score(group, ScoringContext.for_model(meta_copy(model), 0, sig))


def test_a_member_the_model_does_not_have_is_an_error_naming_it(setup):
    model, group, *_ = setup
    foreign = Group(group.id, group.kind, group.layer, group.n_units,
                    [group.members[0], Member("mlp.down.weight", 1, group.members[1].unit_of)],
                    unit_params=group.unit_params, mask_equivalent=True, factors=group.factors)
    with pytest.raises(UsageError, match=r"member mlp\.down\.weight of group mlp_channel@all is not a parameter or buffer"):
        make_estimator("l1").score(foreign, ScoringContext.for_model(model, 0))


def test_signal_collection_leaves_the_model_as_it_was(setup):
    model, *_ = setup
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    collect_signals(model, SAMPLES, {"grad", "fisher", "activations"}, progress=False)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n][0]) and p.requires_grad == before[n][1] and p.grad is None
    assert not model.training


def test_unknown_signal_is_refused(setup):
    with pytest.raises(ValueError, match="unknown signals"):
        collect_signals(setup[0], SAMPLES, {"hessian"})


def test_signals_only_for_the_given_params(setup):
    # the scored weights get the same signals as with every parameter differentiated; the
    # others (embedding, head) get none, and are left as they were
    model, *_ = setup
    wanted = {"up.weight", "down.weight"}
    full = collect_signals(model, SAMPLES, {"grad", "fisher", "activations"}, progress=False)
    part = collect_signals(model, SAMPLES, {"grad", "fisher", "activations"}, progress=False, params=wanted)
    assert set(part.grad) == set(part.fisher) == wanted and set(part.act_sq) <= wanted
    for n in wanted:
        assert torch.allclose(part.grad[n], full.grad[n]) and torch.allclose(part.fisher[n], full.fisher[n])
    assert torch.equal(part.act_sq["down.weight"], full.act_sq["down.weight"])
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="none of the given params"):
        collect_signals(model, SAMPLES, {"grad"}, progress=False, params={"no.such.weight"})


class WithAnIdleLayer(nn.Module):
    """``idle`` is a linear layer that never runs: no gradient, no input statistics reach it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 4)
        self.up, self.down, self.idle = nn.Linear(4, 6), nn.Linear(6, 11), nn.Linear(6, 11)

    def forward(self, ids):
        return self.down(torch.relu(self.up(self.emb(ids))))  # (B, T, 11)


@pytest.mark.parametrize("needs", [{"grad"}, {"grad", "fisher"}, {"activations"}])
def test_weights_without_a_signal_get_zeros_not_gaps(needs):
    """A wanted weight that backward never reaches, or a layer that never runs, has zero signals
    (its Taylor / activation score is 0, the truth) -- never a missing entry that an estimator would
    read as 'not applicable' and silently drop."""
    model = WithAnIdleLayer()
    ids = [torch.randint(0, 11, (1, 8), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    sig = collect_signals(model, ids, needs, progress=False, params=["up.weight", "idle.weight"])
    if "grad" in needs:
        assert sig.grad["up.weight"].abs().sum() > 0 and torch.equal(sig.grad["idle.weight"], torch.zeros(11, 6))
    if "fisher" in needs:
        assert torch.equal(sig.fisher["idle.weight"], torch.zeros(11, 6))
    if "activations" in needs:
        assert sig.act_norm("up.weight").sum() > 0
        assert torch.equal(sig.act_norm("idle.weight"), torch.zeros(6))
        assert torch.equal(sig.act_var("idle.weight"), torch.zeros(6))
