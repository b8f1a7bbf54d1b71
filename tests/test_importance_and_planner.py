"""Estimators on hand-computed examples, aggregations, and the uniform planner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from depgraph.groups import Group, Member
from pruners.executor import PlanError, validate_keep
from pruners.importance import AGGREGATIONS, ESTIMATORS, ScoringContext, make_estimator, unit_scores
from pruners.planner import PlannerConfig, plan_global, plan_uniform


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(2, 3, bias=False)
        self.down = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 4.0]]))  # rows = units
            self.down.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [-1.0, 3.0, 0.0]]))  # columns = units


def channel_group() -> Group:
    unit_of = np.arange(3)
    members = [Member("up.weight", 0, unit_of), Member("down.weight", 1, unit_of)]
    return Group("mlp_channel@0", "mlp_channel", 0, 3, members, unit_params=4, exact=True, factors=("f",))


def ctx(seed=0):
    return ScoringContext.for_model(Two(), seed)


def test_l1_by_hand():
    s = make_estimator("l1").score(channel_group(), ctx())
    assert s.tolist() == [[3.0, 1.0, 7.0], [2.0, 3.0, 2.0]]  # |1|+|-2|, ...; down columns |1|+|-1|, ...


def test_l2_by_hand():
    s = make_estimator("l2").score(channel_group(), ctx())
    expect = [[5 ** 0.5, 0.5 ** 0.5, 5.0], [2 ** 0.5, 3.0, 2.0]]
    assert np.allclose(s.numpy(), expect)


@pytest.mark.parametrize(
    "agg,expect",
    [("sum", [5.0, 4.0, 9.0]), ("mean", [2.5, 2.0, 4.5]), ("max", [3.0, 3.0, 7.0]), ("prod", [6.0, 3.0, 14.0]), ("last", [2.0, 3.0, 2.0])],
)
def test_aggregations_by_hand(agg, expect):
    assert unit_scores(channel_group(), make_estimator("l1"), ctx(), agg).tolist() == expect


def test_random_is_seeded():
    g = channel_group()
    a = unit_scores(g, make_estimator("random"), ctx(1))
    b = unit_scores(g, make_estimator("random"), ctx(1))
    c = unit_scores(g, make_estimator("random"), ctx(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_registries_name_the_valid_choices():
    assert {"random", "l1", "l2"} <= set(ESTIMATORS)
    assert set(AGGREGATIONS) >= {"sum", "mean", "max", "prod", "last"}
    with pytest.raises(KeyError, match="registered: .*l1"):
        make_estimator("nope")


def fake(kind, layer, n, unit_params, per_block=None):
    return Group(f"{kind}@{layer}", kind, layer, n, [], unit_params, True, ("f",), per_block)


def test_uniform_plan_hits_the_parameter_target_and_drops_lowest_scores():
    groups = [fake("mlp_channel", 0, 10, 100), fake("mlp_channel", 1, 10, 100)]
    scores = {"mlp_channel@0": np.arange(10.0), "mlp_channel@1": np.arange(10.0)[::-1].copy()}
    plan = plan_uniform(groups, scores, PlannerConfig(ratio=0.2, kinds=["mlp_channel"]), total_params=3000)
    assert plan.params_removed == 600
    assert plan.keep["mlp_channel@0"] == list(range(3, 10))
    assert plan.keep["mlp_channel@1"] == list(range(0, 7))


def test_query_heads_are_removed_equally_per_kv_group():
    g = fake("query_head", 0, 8, 10, per_block=4)
    scores = {g.id: np.array([4, 3, 2, 1, 1, 2, 3, 4], dtype=float)}
    plan = plan_uniform([g], scores, PlannerConfig(ratio=0.05, kinds=["query_head"]), total_params=800)
    # 40 of 800 parameters = 4 heads: 2 per KV group, the lowest-scoring in each
    assert plan.keep[g.id] == [0, 1, 6, 7]


def test_plan_that_empties_a_group_is_refused():
    groups = [fake("kv_group", 0, 2, 1000), fake("mlp_channel", 0, 100, 1)]
    with pytest.raises(PlanError, match="would remove every kv_group unit of layer 0"):
        plan_uniform(groups, {g.id: np.zeros(g.n_units) for g in groups}, PlannerConfig(ratio=0.95, kinds=["attention", "mlp_channel"]), 2200)


def test_planner_config_validation():
    with pytest.raises(ValueError):
        PlannerConfig(ratio=1.0)
    with pytest.raises(ValueError):
        PlannerConfig(ratio=0.2, kinds=["kv_group", "query_head"])


def test_executor_refuses_unequal_query_heads():
    g = fake("query_head", 0, 4, 10, per_block=2)
    with pytest.raises(PlanError, match="equal numbers per KV group"):
        validate_keep([g], {g.id: [0, 1, 2]})


def layered(n_layers=8, units=16, unit_params=10):
    return [fake("mlp_channel", i, units, unit_params) for i in range(n_layers)]


def test_layer_range_keeps_first_and_last_layers_like_llm_pruner():
    groups = layered()
    scores = {g.id: np.arange(16.0) for g in groups}
    total = 8 * 16 * 10 * 2
    plan = plan_uniform(groups, scores, PlannerConfig(ratio=0.1, kinds=["mlp_channel"], layers=(2, -1)), total)
    assert sorted(int(k.split("@")[1]) for k in plan.keep) == [2, 3, 4, 5, 6]
    assert abs(plan.params_removed - 0.1 * total) <= 5 * 10  # within one unit per pruned group
    fractional = plan_uniform(groups, scores, PlannerConfig(ratio=0.1, kinds=["mlp_channel"], layers=(0.25, 0.875)), total)
    assert fractional.keep.keys() == plan.keep.keys()


def test_global_ranking_prunes_where_normalised_scores_are_low():
    groups = layered(n_layers=2)
    flat = np.ones(16)
    skewed = np.concatenate([np.full(8, 0.01), np.full(8, 1.99)])  # same mean, half the units nearly useless
    scores = {"mlp_channel@0": flat, "mlp_channel@1": skewed}
    plan = plan_global(groups, scores, PlannerConfig(ratio=0.25, kinds=["mlp_channel"], strategy="global"), 320)
    assert "mlp_channel@0" not in plan.keep  # uniform layer untouched
    assert plan.keep["mlp_channel@1"] == list(range(8, 16))
    assert plan.params_removed == 80


def test_global_keeps_min_units_and_moves_query_heads_per_kv_group():
    qh = fake("query_head", 0, 8, 10, per_block=4)
    scores = {qh.id: np.array([1, 2, 3, 4, 4, 3, 2, 1], dtype=float)}
    plan = plan_global([qh], scores, PlannerConfig(ratio=0.125, kinds=["query_head"], strategy="global"), 160)
    assert plan.keep[qh.id] == [1, 2, 3, 4, 5, 6]  # one head (the lowest) from each KV group
    with pytest.raises(PlanError, match="cannot be reached"):
        plan_global([qh], scores, PlannerConfig(ratio=0.48, kinds=["query_head"], strategy="global", min_units=3), 160)


def test_round_to_keeps_multiples():
    groups = layered(n_layers=2, units=64, unit_params=1)
    scores = {g.id: np.arange(64.0) for g in groups}
    plan = plan_uniform(groups, scores, PlannerConfig(ratio=0.2, kinds=["mlp_channel"], round_to=8), 200)
    assert all(len(k) % 8 == 0 for k in plan.keep.values())
    gplan = plan_global(groups, scores, PlannerConfig(ratio=0.2, kinds=["mlp_channel"], strategy="global", round_to=8), 200)
    assert all(len(k) % 8 == 0 for k in gplan.keep.values())


def test_bad_layer_ranges():
    with pytest.raises(ValueError, match=r"fractional layer bound must be in \[0, 1\]"):
        PlannerConfig(ratio=0.2, layers=(0.5, 1.5))
    with pytest.raises(PlanError, match="selects no layer"):
        plan_uniform(layered(), {}, PlannerConfig(ratio=0.1, kinds=["mlp_channel"], layers=(6, 3)), 1000)
