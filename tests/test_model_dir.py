"""Pruned models open anywhere: the files of the output directory, and plain transformers loading them.

Uniform sizes that the architecture's config can express are written into that config (an
explicit ``head_dim`` where heads no longer divide the hidden size), so the output needs no
code from depprune.  Which zoo architectures can, under a uniform heads + MLP plan, is listed
by hand below: the others size heads from ``hidden_size // n_head`` with no field to override.
"""

from __future__ import annotations

import json

import pytest
import torch

from pruners.io.checkpoint import save_pruned
from pruners.pipeline import PruneConfig, prune

from zoo import ARCHS, NEW_ARCHS, STORIES

ZOO = {name: a for name, a in {**ARCHS, **NEW_ARCHS}.items() if a.hf}
PLAIN_CONFIG = {"llama_gqa", "llama_mha", "mistral", "mistral_eager", "qwen2", "phi3", "gemma", "phi"}
HEAD_DIM_ADDED = {"qwen2", "phi3", "phi"}  # their configs have no head_dim field until depprune writes one
IDS = torch.randint(3, 90, (2, 11), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def uniform():
    """Every zoo architecture pruned 30% (heads and MLP channels), the uniform strategy."""
    return {name: prune(a.build(), PruneConfig(ratio=0.3, importance="l2"), progress=False) for name, a in ZOO.items()}


@pytest.mark.parametrize("name", sorted(PLAIN_CONFIG))
def test_uniform_sizes_are_written_into_the_plain_config(uniform, name, tmp_path):
    from transformers import AutoModelForCausalLM

    result = uniform[name]
    out = save_pruned(result.model, tmp_path / name, result.record)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["depprune"]["hf_loadable"] is True and "auto_map" not in cfg
    assert ("head_dim" in result.record.config) == (name in HEAD_DIM_ADDED)
    assert cfg["head_dim"] == ZOO[name].head_dim
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.config.num_attention_heads < 6
    torch.testing.assert_close(logits(plain), logits(result.model), rtol=0, atol=1e-5)  # eager vs sdpa: not bitwise


@pytest.mark.shared
def test_the_directory_holds_exactly_the_model_files(tmp_path):
    from pruners.io.checkpoint import load_model

    result = prune(load_model(STORIES), PruneConfig(ratio=0.2, importance="l2"), progress=False)
    out = save_pruned(result.model, tmp_path / "o", result.record, source=STORIES)
    assert sorted(p.name for p in out.iterdir()) == [
        ".depprune-output.json",  # OutputDir's marker: --force replaces only what depprune wrote
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]


def test_large_weights_are_sharded_with_an_index(uniform, tmp_path):
    from transformers import AutoModelForCausalLM

    from pruners.io.checkpoint import load_model

    result = uniform["llama_gqa"]
    out = save_pruned(result.model, tmp_path / "s", result.record, max_shard_size=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == shards
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    sizes = {p.name: p.stat().st_size for p in out.glob("*.safetensors")}
    assert all(s < 20_000 + 4_000 for s in sizes.values())  # a shard's header is a few KB at most
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in result.model.parameters())
    assert torch.equal(logits(load_model(out)), logits(result.model))
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out).eval()), logits(result.model))


def test_a_computed_buffer_the_config_cannot_rebuild_is_refused_before_writing(uniform, tmp_path):
    """Non-persistent buffers are not saved; a pruned model whose buffer differs from the rebuilt one
    (here a rotary table altered by hand, as a plan slicing it would) must not be written at all."""
    import copy

    from pruners.errors import PlanError

    model = copy.deepcopy(uniform["llama_gqa"].model)
    model.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq[:-1].clone()
    with pytest.raises(PlanError, match=r"computed buffer 'model.rotary_emb.inv_freq' \[3\] is not what its config rebuilds \(\[4\]\)"):
        save_pruned(model, tmp_path / "b", uniform["llama_gqa"].record)
    assert not (tmp_path / "b").exists()
