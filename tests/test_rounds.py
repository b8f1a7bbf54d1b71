"""Pruning in rounds (``PruneConfig.rounds``): each round re-scores the model the last one left, the
rounds together meet the ratio target, and the result is one model with one record on the original."""

from __future__ import annotations

import json

import pytest
import torch

from pruners import PruneConfig, count_params, load_pruned, prune, save_pruned
from pruners.cli import main

from zoo import ARCHS, STORIES, logits

KINDS = [["hidden_channel", "mlp_channel"], ["attention", "mlp_channel"], ["hidden_channel", "attention", "mlp_channel"]]


@pytest.mark.parametrize("kinds", KINDS)
@pytest.mark.parametrize("strategy", ["uniform", "global"])
def test_rounds_meet_the_target_and_record_the_original_units(kinds, strategy, tmp_path):
    model = ARCHS["qwen2"].build()
    total = count_params(model)
    result = prune(model, PruneConfig(ratio=0.5, kinds=kinds, strategy=strategy, rounds=3), progress=False)
    assert result.params_before == total and result.params_after == count_params(result.model)
    largest_unit = max(g.unit_params for g in result.groups if g.kind in ("hidden_channel", "kv_group", "mlp_channel"))
    assert abs(total - result.params_after - round(0.5 * total)) <= largest_unit * 3  # within a step per round
    assert result.plan.params_removed == total - result.params_after
    # the composed record names original units; an MLP or hidden channel group keeps as many as
    # its first member's axis holds in the final model (no other group cuts that axis)
    by_id = {g.id: g for g in result.groups}
    assert result.record.kept and all(set(k) <= set(range(by_id[gid].n_units)) for gid, k in result.record.kept.items())
    final = dict(result.model.named_parameters())
    for gid, kept in result.record.kept.items():
        g = by_id[gid]
        if g.kind in ("mlp_channel", "hidden_channel"):
            m = g.members[0]
            assert len(kept) * len(m.indices(kept[0])) == final[m.param].shape[m.axis], gid
    # one record rebuilds the model: the reload computes the same logits
    out = save_pruned(result.model, tmp_path / "o", result.record)
    loaded, record = load_pruned(out)
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    assert record == result.record and torch.equal(logits(loaded, ids), logits(result.model, ids))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ARCHS["qwen2"].build().state_dict().values()))


def test_one_round_is_one_shot():
    model = ARCHS["llama_gqa"].build()
    a = prune(model, PruneConfig(ratio=0.3), progress=False)
    b = prune(model, PruneConfig(ratio=0.3, rounds=1), progress=False)
    assert a.record == b.record


def test_rounds_need_a_ratio_target():
    with pytest.raises(ValueError, match="rounds 2 splits a ratio target over rounds; give ratio, not kind_ratios"):
        PruneConfig(kind_ratios={"mlp_channel": 0.5}, rounds=2)


@pytest.mark.shared
def test_cli_rounds(tmp_path, capsys):
    argv = ["prune", "--model", str(STORIES), "--ratio", "0.4", "--kinds", "hidden_channel", "mlp_channel", "--json", "--quiet"]
    assert main([*argv, "--rounds", "2", "--out", str(tmp_path / "r")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 2 and abs(report["ratio_achieved"] - 0.4) < 0.02
    assert json.loads((tmp_path / "r" / "config.json").read_text())["depprune"]["run"]["config"]["rounds"] == 2
    assert main([*argv, "--rounds", "0", "--out", str(tmp_path / "z")]) == 2
    assert "--rounds 0" in capsys.readouterr().err and not (tmp_path / "z").exists()


@pytest.mark.parametrize("rounds", [1, 2])
@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2"])
def test_prune_in_place_slices_the_given_model_as_the_copying_prune_does(arch, rounds):
    """``inplace=True`` returns the given model itself, sliced, equal to the pruned copy; the default leaves it intact."""
    model = ARCHS[arch].build()
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = PruneConfig(ratio=0.3, importance="l2", kinds=["attention", "mlp_channel", "hidden_channel"], rounds=rounds)
    copied = prune(model, config, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the default copies
    in_place = prune(model, config, progress=False, inplace=True)
    assert in_place.model is model
    assert {n: p.shape for n, p in model.named_parameters()} == {n: p.shape for n, p in copied.model.named_parameters()}
    assert torch.allclose(logits(model, ids), logits(copied.model, ids), atol=1e-6)
    assert in_place.record.to_dict() == copied.record.to_dict()
