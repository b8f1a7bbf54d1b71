"""Hand-listed groups and real-weight pruning on ../shared/models/stories260K and its re-expressions."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from depgraph import trace
from depgraph.groups import find_groups
from pruners.io.checkpoint import load_model

from zoo import MODELS, SHARED

TINYSTORIES = SHARED / "data" / "tinystories-valid" / "TinyStories-valid.first46.txt"
VARIANTS = ["stories260K", "stories260K-mistral", "stories260K-qwen2", "stories260K-phi3"]

pytestmark = pytest.mark.shared


@pytest.mark.parametrize("variant", VARIANTS)
def test_hand_listed_groups(variant):
    """5 layers x 4 KV groups, 5 x 8 query heads, 5 x 172 MLP channels, one hidden group of 64."""
    model = load_model(MODELS / variant, weights=False)  # built on meta from config.json
    groups = find_groups(trace(model))
    by_kind = {k: [g for g in groups if g.kind == k] for k in Counter(g.kind for g in groups)}
    assert [(g.layer, g.n_units) for g in by_kind["kv_group"]] == [(i, 4) for i in range(5)]
    assert [(g.layer, g.n_units, g.units_per_block) for g in by_kind["query_head"]] == [(i, 8, 2) for i in range(5)]
    assert [(g.layer, g.n_units) for g in by_kind["mlp_channel"]] == [(i, 172) for i in range(5)]
    assert [(g.layer, g.n_units) for g in by_kind["hidden_channel"]] == [(None, 64)]
    assert "attention_head" not in by_kind  # GQA: heads come as KV groups and query heads
    # per-unit parameter counts: a KV group is 8 k rows + 8 v rows + 16 q rows + 16 o columns of width 64
    bias = 16 + 8 + 8 if variant.endswith("qwen2") else 0
    assert {g.unit_params for g in by_kind["kv_group"]} == {(8 + 8 + 16 + 16) * 64 + bias}
    assert {g.unit_params for g in by_kind["mlp_channel"]} == {3 * 64}
    assert all(g.mask_equivalent for g in by_kind["kv_group"] + by_kind["mlp_channel"])
    assert not by_kind["hidden_channel"][0].mask_equivalent  # RMSNorm averages over the hidden channels


def test_fused_phi3_members_are_slices_of_the_fused_weights():
    groups = find_groups(trace(load_model(MODELS / "stories260K-phi3", weights=False)))
    kv = next(g for g in groups if g.id == "kv_group@0")
    qkv = next(m for m in kv.members if m.param.endswith("qkv_proj.weight"))
    # KV head 1: query rows 16..31 (two query heads), key rows 64+8..64+15, value rows 96+8..96+15
    assert qkv.indices(1).tolist() == list(range(16, 32)) + list(range(72, 80)) + list(range(104, 112))
    mlp = next(g for g in groups if g.id == "mlp_channel@0")
    gate_up = next(m for m in mlp.members if m.param.endswith("gate_up_proj.weight"))
    assert gate_up.indices(5).tolist() == [5, 172 + 5]


@pytest.mark.slow
def test_prune_20_percent_l2_generates_and_has_finite_perplexity(tmp_path, record_result):
    from pruners.cli import main

    out = tmp_path / "pruned"
    import contextlib
    import io
    import json

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([
            "prune", "--model", str(MODELS / "stories260K"), "--ratio", "0.2", "--importance", "l2",
            "--out", str(out), "--eval-text", str(TINYSTORIES), "--json", "--quiet",
        ])
    assert code == 0
    report = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert abs(report["ratio_achieved"] - 0.2) < 0.01
    assert math.isfinite(report["ppl_after"]) and report["ppl_after"] > report["ppl_before"] > 3.0
    record_result(f"stories260K l2 20%: params {report['params_before']} -> {report['params_after']}, "
                  f"TinyStories PPL {report['ppl_before']:.3f} -> {report['ppl_after']:.3f}")
    pruned = load_model(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = pruned.generate(torch.tensor([[tok.bos_token_id]]), max_new_tokens=20, do_sample=False)
    text = tok.decode(ids[0], skip_special_tokens=True)
    assert ids.shape[1] == 21 and text.strip()
    record_result(f"stories260K l2 20% greedy sample: {text!r}")


@pytest.mark.parametrize("variant", ["stories260K", "stories260K-phi3"])
def test_members_are_in_execution_order(variant):
    """``last`` aggregation reads the last-executing member: down_proj for MLP channels, o_proj for heads."""
    groups = find_groups(trace(load_model(MODELS / variant, weights=False)))
    mlp = next(g for g in groups if g.id == "mlp_channel@2")
    assert mlp.members[-1].param == "model.layers.2.mlp.down_proj.weight"
    kv = next(g for g in groups if g.id == "kv_group@2")
    assert kv.members[0].param.endswith(("q_proj.weight", "qkv_proj.weight"))
    assert kv.members[-1].param == "model.layers.2.self_attn.o_proj.weight"
