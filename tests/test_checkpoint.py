"""Saving and loading pruned models: equal logits, plain-HF loading when expressible, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch

from pruners.errors import OutputError
from pruners.io.checkpoint import load_model, save_pruned
from pruners.pipeline import PruneConfig, prune

from zoo import ARCHS, STORIES

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def source():
    return load_model(STORIES)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(3, 500, (2, 25), generator=torch.Generator().manual_seed(0))


def test_uniform_mlp_prune_is_plain_hf_loadable(source, tmp_path):
    from transformers import AutoModelForCausalLM

    result = prune(source, PruneConfig(ratio=0.2, importance="l1", kinds=["mlp_channel"]), progress=False)
    out = save_pruned(result.model, tmp_path / "mlp", result.record, source=STORIES)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["depprune"]["hf_loadable"] is True
    assert cfg["intermediate_size"] == result.model.model.layers[0].mlp.down_proj.in_features < 172
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(plain, IDS), logits(result.model, IDS))
    assert torch.equal(logits(load_model(out), IDS), logits(result.model, IDS))


def test_per_layer_sizes_round_trip_through_the_record(source, tmp_path):
    from depgraph import meta_copy, trace
    from depgraph.groups import find_groups
    from pruners.slicing.executor import execute

    tr = trace(meta_copy(source))
    groups = find_groups(tr)
    keep = {"kv_group@0": [0, 2, 3], "kv_group@3": [1], "mlp_channel@2": list(range(0, 172, 2)),
            "query_head@4": [0, 2, 4, 6]}
    pruned, record = execute(source, tr, groups, keep)
    out = save_pruned(pruned, tmp_path / "mixed", record, source=STORIES)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["depprune"]["hf_loadable"] is False  # sizes differ per layer: only the record describes them
    loaded = load_model(out)
    assert torch.equal(logits(loaded, IDS), logits(pruned, IDS))
    prompt = IDS[:1, :5]
    cached = loaded.generate(prompt, max_new_tokens=8, do_sample=False)
    uncached = loaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert loaded.model.layers[3].self_attn.k_proj.out_features == 8


def test_existing_output_is_kept_without_force(source, tmp_path):
    result = prune(source, PruneConfig(ratio=0.1, importance="random"), progress=False)
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="--force"):
        save_pruned(result.model, out, result.record)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    with pytest.raises(OutputError, match="not written by depprune"):  # --force replaces only depprune's output
        save_pruned(result.model, out, result.record, force=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    save_pruned(result.model, out, result.record)
    save_pruned(result.model, out, result.record, force=True)
    assert (out / "config.json").is_file()


def test_failed_save_leaves_nothing_behind(source, tmp_path, monkeypatch):
    result = prune(source, PruneConfig(ratio=0.1, importance="random"), progress=False)

    def broken(model):  # called after the weights and config are already written
        raise OSError("disk full")

    monkeypatch.setattr("pruners.io.checkpoint.computed_buffers", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(result.model, tmp_path / "out", result.record)
    assert list(tmp_path.iterdir()) == []


def test_input_model_is_not_modified(source):
    before = {k: v.clone() for k, v in source.state_dict().items()}
    prune(source, PruneConfig(ratio=0.3, importance="l2", kinds=["query_head", "mlp_channel"]), progress=False)
    after = source.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_computed_buffers_survive_hidden_pruning(tmp_path):
    """Gemma scales embeddings by a non-persistent sqrt(hidden_size) buffer: the pruned model keeps the
    original scale, so its config must not claim the new hidden size, and the reload must be exact."""
    from depgraph import meta_copy, trace
    from depgraph.groups import find_groups
    from pruners.slicing.executor import execute

    model = ARCHS["gemma"].build()
    tr = trace(meta_copy(model))
    groups = find_groups(tr)
    hidden = next(g for g in groups if g.kind == "hidden_channel")
    pruned, record = execute(model, tr, groups, {hidden.id: list(range(0, 48, 3))})
    assert record.config is None
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    loaded = load_model(save_pruned(pruned, tmp_path / "g", record))
    assert torch.equal(logits(loaded, ids), logits(pruned, ids))
