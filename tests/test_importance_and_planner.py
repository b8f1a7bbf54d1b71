"""Estimators on hand-computed examples, aggregations, and the uniform planner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from depgraph.groups import Group, Member
from pruners.executor import PlanError, validate_keep
from pruners.importance import AGGREGATIONS, ESTIMATORS, ScoringContext, make_estimator, unit_scores
from pruners.planner import PlannerConfig, plan_uniform


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
