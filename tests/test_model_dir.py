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

from zoo import ARCHS, NEW_ARCHS

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
