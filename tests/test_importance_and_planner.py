"""Estimators on hand-computed examples, aggregations, and the uniform planner."""

from __future__ import annotations

import numpy as np
import pytest

from depgraph.groups import Group
from pruners.errors import PlanError
from pruners.importance import AGGREGATIONS, ESTIMATORS, ScoringContext, make_estimator, unit_scores
from pruners.pipeline import PruneConfig, check_feasible
from pruners.planner import PlannerConfig, plan_global, plan_uniform
from pruners.slicing.executor import validate_keep

from zoo import STORIES, Two, channel_group, require_shared


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
    with pytest.raises(ValueError, match="unknown importance .nope.; registered: .*l1"):
        make_estimator("nope")


def fake(kind, layer, n, unit_params, per_block=None):
    return Group(f"{kind}@{layer}", kind, layer, n, [], unit_params, True, ("f",), per_block)


def test_uniform_plan_hits_the_parameter_target_and_drops_lowest_scores():
    groups = [fake("mlp_channel", 0, 10, 100), fake("mlp_channel", 1, 10, 100)]
    scores = {"mlp_channel@0": np.arange(10.0), "mlp_channel@1": np.arange(10.0)[::-1].copy()}
    plan = plan_uniform(groups, scores, PlannerConfig(ratio=0.2, kinds=["mlp_channel"]), total_params=3000)
    assert plan.params_removed == 600
    assert plan.keep["mlp_channel@0"] == list(range(3, 10))
    assert plan.keep["mlp_channel@1"] == list(range(7))


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


# -- an explicit per-kind ratio (kind_ratios) instead of a parameter fraction ------------------

STORIES_PARAMS = 260032


@pytest.fixture(scope="module")
def stories_groups():
    """The real groups of stories260K: 5 layers x (4 KV groups, 8 query heads in blocks of 2, 172 MLP channels)."""
    require_shared(STORIES)
    from depgraph import trace
    from depgraph.groups import find_groups
    from pruners.io.checkpoint import load_model

    return find_groups(trace(load_model(STORIES, weights=False)))


def random_scores(groups, seed=0):
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.n_units) for g in groups}


def removed_by_kind(groups, plan):
    """Units removed per group kind, kinds with none left out."""
    out = {}
    for g in groups:
        out[g.kind] = out.get(g.kind, 0) + g.n_units - len(plan.keep.get(g.id, range(g.n_units)))
    return {k: n for k, n in out.items() if n}


def test_exactly_one_target_is_required():
    for kwargs in ({}, {"ratio": 0.2, "kind_ratios": {"mlp_channel": 0.5}}):
        with pytest.raises(ValueError, match=r"exactly one target: ratio .* or kind_ratios"):
            PlannerConfig(**kwargs)
        with pytest.raises(ValueError, match=r"exactly one target: ratio .* or kind_ratios"):
            PruneConfig(**kwargs)
    assert PlannerConfig(ratio=0.2).kind_ratios is None
    cfg = PruneConfig(kind_ratios={"attention": 0.25, "mlp_channel": 0.5})
    assert cfg.ratio is None and cfg.kinds == ["attention", "mlp_channel"]
    assert cfg.kind_ratios == {"attention": 0.25, "mlp_channel": 0.5}
    assert PlannerConfig(kind_ratios={"query_head": 0.5}).kinds == ["query_head"]  # the keys are the kinds


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind_ratios": {"mlp_channel": 1.0}}, "less than 1"),
        ({"kind_ratios": {"mlp_channel": 0.0}}, "greater than 0"),
        ({"kind_ratios": {"layers": 0.5}}, "Input should be 'attention'"),
        ({"kind_ratios": {}}, "at least one kind"),
        ({"kind_ratios": {"query_head": 0.5, "attention": 0.25}}, "not both"),
        ({"kind_ratios": {"mlp_channel": 0.5}, "kinds": ["attention", "mlp_channel"]}, "differ from the kind_ratios"),
    ],
)
def test_kind_ratios_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlannerConfig(**kwargs)


def test_kinds_equal_to_the_kind_ratios_keys_are_accepted():
    cfg = PlannerConfig(kind_ratios={"mlp_channel": 0.5, "attention": 0.25}, kinds=["attention", "mlp_channel"])
    assert cfg.kinds == ["mlp_channel", "attention"]


@pytest.mark.parametrize(
    "kind_ratios,kept",
    [
        ({"attention": 0.25, "mlp_channel": 0.5}, {"kv_group": 4 - 1, "mlp_channel": 172 - 86}),
        ({"mlp_channel": 0.3}, {"mlp_channel": 172 - 52}),  # round(51.6) = 52
        ({"attention": 0.5}, {"kv_group": 2}),
    ],
)
def test_uniform_kind_ratios_remove_round_r_n_units_from_every_group(stories_groups, kind_ratios, kept):
    scores = random_scores(stories_groups)
    plan = plan_uniform(stories_groups, scores, PlannerConfig(kind_ratios=kind_ratios), STORIES_PARAMS)
    for g in stories_groups:
        if g.kind in kept:
            n_remove = g.n_units - kept[g.kind]
            assert plan.keep[g.id] == sorted(np.argsort(scores[g.id], kind="stable")[n_remove:].tolist())
        else:  # query heads, hidden channels: not named, untouched
            assert g.id not in plan.keep
    assert {k: s["removed_units"] for k, s in plan.by_kind.items()} == {
        k: 5 * (172 if k == "mlp_channel" else 4) - 5 * n for k, n in kept.items()
    }
    assert plan.params_removed == sum(
        (g.n_units - len(plan.keep[g.id])) * g.unit_params for g in stories_groups if g.id in plan.keep
    )
    units = sum(g.n_units for g in stories_groups if g.kind in kept)
    assert plan.group_ratio == pytest.approx(sum(plan.by_kind[k]["removed_units"] for k in kept) / units)


def test_uniform_query_head_kind_ratio_removes_heads_per_kv_group(stories_groups):
    scores = random_scores(stories_groups, seed=3)
    plan = plan_uniform(stories_groups, scores, PlannerConfig(kind_ratios={"query_head": 0.5}), STORIES_PARAMS)
    heads = [g for g in stories_groups if g.kind == "query_head"]
    assert set(plan.keep) == {g.id for g in heads}
    for g in heads:  # 8 heads in 4 KV groups of 2: the better head of each pair stays
        s = scores[g.id]
        assert plan.keep[g.id] == [2 * b + int(s[2 * b + 1] > s[2 * b]) for b in range(4)]
    assert plan.by_kind == {"query_head": {"units": 40, "removed_units": 20, "removed_params": 20 * heads[0].unit_params}}


def test_uniform_kind_ratios_respect_round_to_and_min_units(stories_groups):
    scores = random_scores(stories_groups)
    plan = plan_uniform(stories_groups, scores, PlannerConfig(kind_ratios={"mlp_channel": 0.3}, round_to=8), STORIES_PARAMS)
    assert {len(k) for k in plan.keep.values()} == {120}  # 172 - round(51.6) = 120, a multiple of 8
    plan = plan_uniform(stories_groups, scores, PlannerConfig(kind_ratios={"mlp_channel": 0.2}, round_to=8), STORIES_PARAMS)
    assert {len(k) for k in plan.keep.values()} == {136}  # 172 - 34 = 138 -> 136
    with pytest.raises(PlanError, match="kind ratio attention=0.75 would leave fewer than --min-units 2 kv_group units in layer 0"):
        plan_uniform(stories_groups, scores, PlannerConfig(kind_ratios={"attention": 0.75}, min_units=2), STORIES_PARAMS)
    with pytest.raises(PlanError, match="kind ratio attention=0.9 would remove every kv_group unit of layer 0.*--kind-ratio attention"):
        plan_uniform(stories_groups, scores, PlannerConfig(kind_ratios={"attention": 0.9, "mlp_channel": 0.1}), STORIES_PARAMS)
    with pytest.raises(PlanError, match=r"no groups of kinds \['attention_head'\]"):  # GQA: KV groups, not heads
        plan_uniform(stories_groups, scores, PlannerConfig(kind_ratios={"attention_head": 0.5}), STORIES_PARAMS)


def test_kind_ratios_and_layer_range(stories_groups):
    cfg = PlannerConfig(kind_ratios={"mlp_channel": 0.5}, layers=(1, -1))
    plan = plan_uniform(stories_groups, random_scores(stories_groups), cfg, STORIES_PARAMS)
    assert sorted(plan.keep) == ["mlp_channel@1", "mlp_channel@2", "mlp_channel@3"]


@pytest.mark.parametrize(
    "kind_ratios,removed",
    [
        ({"attention": 0.25, "mlp_channel": 0.5}, {"kv_group": 5, "mlp_channel": 430}),
        ({"query_head": 0.5, "mlp_channel": 0.1}, {"query_head": 20, "mlp_channel": 86}),
        ({"hidden_channel": 0.25}, {"hidden_channel": 16}),
    ],
)
def test_global_kind_ratios_remove_the_right_total_per_kind(stories_groups, kind_ratios, removed):
    cfg = PlannerConfig(kind_ratios=kind_ratios, strategy="global")
    plan = plan_global(stories_groups, random_scores(stories_groups, seed=1), cfg, STORIES_PARAMS)
    assert removed_by_kind(stories_groups, plan) == removed
    assert all(len(k) >= 1 for k in plan.keep.values())


def test_global_kind_ratio_ranks_across_layers_within_the_kind():
    groups = layered(n_layers=2) + [fake("kv_group", 0, 4, 50), fake("kv_group", 1, 4, 50)]
    skewed = np.concatenate([np.full(8, 0.01), np.full(8, 1.99)])  # same mean as flat, half nearly useless
    scores = {"mlp_channel@0": np.ones(16), "mlp_channel@1": skewed, "kv_group@0": np.array([1.0, 2, 3, 4]),
              "kv_group@1": np.array([4.0, 3, 2, 1])}
    cfg = PlannerConfig(kind_ratios={"mlp_channel": 0.25, "attention": 0.25}, strategy="global")
    plan = plan_global(groups, scores, cfg, 1000)
    assert "mlp_channel@0" not in plan.keep and plan.keep["mlp_channel@1"] == list(range(8, 16))  # 8 of 32
    assert removed_by_kind(groups, plan)["kv_group"] == 2  # 25% of 8, not more because MLP scores are lower


def test_global_kind_ratios_respect_min_units_and_round_to(stories_groups):
    scores = random_scores(stories_groups, seed=2)
    cfg = PlannerConfig(kind_ratios={"attention": 0.25}, strategy="global", min_units=3)
    plan = plan_global(stories_groups, scores, cfg, STORIES_PARAMS)
    assert {len(k) for k in plan.keep.values()} == {3} and len(plan.keep) == 5  # one per layer: no group below 3
    with pytest.raises(PlanError, match="kind ratio attention=0.5 cannot be reached while every group keeps 3"):
        plan_global(stories_groups, scores, cfg.model_copy(update={"kind_ratios": {"attention": 0.5}}), STORIES_PARAMS)
    cfg = PlannerConfig(kind_ratios={"mlp_channel": 0.3}, strategy="global", round_to=8)
    plan = plan_global(stories_groups, scores, cfg, STORIES_PARAMS)
    assert plan.keep and all(len(k) % 8 == 0 for k in plan.keep.values())
    assert abs(removed_by_kind(stories_groups, plan)["mlp_channel"] - 258) <= 5 * 4  # rounding moves at most 4 a group


def test_global_query_head_kind_ratio_stops_at_the_nearest_step(stories_groups):
    # a query-head step takes one head from each of a layer's 4 KV groups: 13 units is nearest to 12
    cfg = PlannerConfig(kind_ratios={"query_head": 0.33}, strategy="global")
    plan = plan_global(stories_groups, random_scores(stories_groups), cfg, STORIES_PARAMS)
    assert removed_by_kind(stories_groups, plan) == {"query_head": 12}
    assert all(sorted({u // 2 for u in k}) == [0, 1, 2, 3] for k in plan.keep.values())


@pytest.mark.parametrize("strategy", ["uniform", "global"])
def test_check_feasible_takes_either_target(stories_groups, strategy):
    ok = check_feasible(stories_groups, PruneConfig(kind_ratios={"mlp_channel": 0.5}, strategy=strategy), STORIES_PARAMS)
    assert ok.by_kind["mlp_channel"]["removed_units"] == 430
    assert check_feasible(stories_groups, PruneConfig(ratio=0.2, strategy=strategy), STORIES_PARAMS).params_removed > 0
    with pytest.raises(PlanError, match="kind ratio attention=0.9"):
        check_feasible(stories_groups, PruneConfig(kind_ratios={"attention": 0.9}, strategy=strategy), STORIES_PARAMS)
