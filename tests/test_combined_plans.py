"""Plans that prune hidden channels together with attention heads and MLP channels, on every architecture.

In GPT-2 and nanoGPT one attribute (``split_size``, ``n_embd``) holds both the residual width and
``heads * head_dim``: with hidden channels *and* heads removed it must follow the heads, not the
hidden size.  Every architecture of the zoo (``ARCHS`` and ``NEW_ARCHS``) is pruned here with one
plan of hidden channels, its head kind (KV groups and query heads under GQA) and MLP channels.

The oracle: removing hidden channels alone is already checked (``test_architectures``); given that
model, removing the exact units as well must equal it with those units' slices zeroed (the masked
dense oracle applied after the hidden channels are gone).  Parameter counts, shapes, finiteness,
generation with the KV cache and the save/load round trip are checked too.  Architectures whose
plans execute() refuses (``Arch.refused``) must raise one-line errors, never give a wrong model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from depgraph import meta_copy, trace
from depgraph.groups import find_groups
from pruners import masked_copy, removed_positions
from pruners.errors import PlanError
from pruners.pipeline import PruneConfig, prune
from pruners.slicing.attributes import AttributeInferenceError
from pruners.slicing.executor import execute

from zoo import ARCHS, ATOL, NEW_ARCHS, SEQ_SHAPE, VOCAB, logits, n_params, random_plan, removed_masks

ZOO = {**ARCHS, **NEW_ARCHS}
DONE = [a for a in ZOO if not ZOO[a].refused]
REFUSED = [a for a in ZOO if ZOO[a].refused]


@dataclass
class Case:
    model: nn.Module
    trace: object
    groups: list
    hidden: nn.Module  # only the hidden channels removed
    exact_keep: dict[str, list[int]]
    keep: dict[str, list[int]]  # hidden channels and the exact kinds
    pruned: nn.Module
    record: object


@pytest.fixture(scope="module")
def case():
    cache: dict[str, Case] = {}

    def get(arch: str) -> Case:
        if arch not in cache:
            model = ZOO[arch].build()
            tr = trace(meta_copy(model))
            groups = find_groups(tr)
            hidden_keep = random_plan(groups, "hidden_channel")
            exact_keep = random_plan(groups, "combined")  # heads or KV groups and their query heads, MLP channels
            keep = {**hidden_keep, **exact_keep}
            hidden, _ = execute(model, tr, groups, hidden_keep)
            pruned, record = execute(model, tr, groups, keep)
            cache[arch] = Case(model, tr, groups, hidden.eval(), exact_keep, keep, pruned.eval(), record)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", DONE)
def test_combined_plan_is_hidden_pruning_then_masking(case, batch, arch):
    c = case(arch)
    hidden_axes = {(m.param, m.axis) for g in c.groups if g.kind == "hidden_channel" for m in g.members}
    exact = [g for g in c.groups if g.id in c.exact_keep]
    assert {g.kind for g in c.groups if g.id in c.keep} >= {"hidden_channel", "mlp_channel"}
    # the exact units' positions lie on axes the hidden channels leave alone: valid in the hidden-pruned model
    assert not {(m.param, m.axis) for g in exact for m in g.members} & hidden_axes
    ref = masked_copy(c.hidden, removed_positions(c.groups, c.exact_keep))
    got, want = logits(c.pruned, batch), logits(ref, batch)
    assert got.shape == (*SEQ_SHAPE, VOCAB) and torch.isfinite(got).all()
    diff = (got - want).abs().max().item()
    assert diff <= ATOL, f"max |pruned - masked hidden-pruned| = {diff:.3e}"
    assert (logits(c.hidden, batch) - want).abs().max().item() > 1e-3  # the exact units did matter


@pytest.mark.parametrize("arch", DONE)
def test_combined_plan_shapes_and_parameter_count(case, arch):
    c = case(arch)
    orig = dict(c.model.named_parameters()) | dict(c.model.named_buffers())
    now = dict(c.pruned.named_parameters()) | dict(c.pruned.named_buffers())
    masks = removed_masks(c.model, c.groups, c.keep)
    for name, mask in masks.items():  # every axis keeps the positions no removed unit owns
        for axis in range(mask.ndim):
            gone = mask.all(dim=tuple(d for d in range(mask.ndim) if d != axis)) if mask.ndim > 1 else mask
            assert now[name].shape[axis] == orig[name].shape[axis] - int(gone.sum()), (name, axis)
    removed = sum(int(m.sum()) for name, m in masks.items() if name in dict(c.model.named_parameters()))
    assert n_params(c.pruned) == n_params(c.model) - removed  # crossings of hidden and exact units counted once


@pytest.mark.parametrize("arch", [a for a in DONE if ZOO[a].hf])
def test_combined_plan_generates_and_round_trips(case, batch, arch, tmp_path):
    from pruners.io.checkpoint import load_model, save_pruned

    c = case(arch)
    kw = {"attention_mask": torch.ones_like(batch), "max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False}
    with torch.no_grad():
        cached = c.pruned.generate(batch, use_cache=True, **kw)  # (2, 14)
    assert cached.shape == (SEQ_SHAPE[0], SEQ_SHAPE[1] + 3) and torch.equal(cached[:, : SEQ_SHAPE[1]], batch)
    greedy = logits(c.pruned, cached[:, :-1])[:, SEQ_SHAPE[1] - 1 :].argmax(-1)  # no cache: one pass over it all
    assert torch.equal(cached[:, SEQ_SHAPE[1] :], greedy)
    out = save_pruned(c.pruned, tmp_path / "out", c.record)
    loaded = load_model(out, attn_implementation=c.pruned.config._attn_implementation)
    assert n_params(loaded) == n_params(c.pruned)
    assert torch.equal(logits(loaded, batch), logits(c.pruned, batch))


@pytest.mark.parametrize("arch,strategy", [("gpt2", "uniform"), ("gpt2", "global"), ("nanogpt_prelu", "global")])
def test_pipeline_prunes_hidden_channels_and_heads(case, batch, arch, strategy):
    """The reported runs: ``--kinds hidden_channel attention`` on GPT-2 and nanoGPT-style attention."""
    c = case(arch)
    config = PruneConfig(ratio=0.3, kinds=["hidden_channel", "attention"], strategy=strategy)
    result = prune(c.model, config, progress=False, analysis=(c.trace, c.groups))
    assert {gid.split("@")[0] for gid in result.plan.keep} == {"hidden_channel", "attention_head"}
    assert result.params_after == n_params(result.model) == result.params_before - result.plan.params_removed
    assert torch.isfinite(logits(result.model, batch)).all()


def test_uniform_hidden_and_kv_plan_is_plain_hf_loadable(case, batch, tmp_path):
    """Every layer keeps 2 of 3 KV groups and 50 MLP channels, the model 36 of 48 hidden channels:
    ``hidden_size`` is then 36 (not ``heads * head_dim`` = 32), which only a rebuild can tell."""
    from transformers import AutoModelForCausalLM

    from pruners.io.checkpoint import save_pruned

    c = case("llama_gqa")
    keep = {g.id: {"hidden_channel": list(range(0, 48, 4)) + list(range(1, 48, 2)), "kv_group": [0, 2],
                   "mlp_channel": list(range(5, 55))}[g.kind]
            for g in c.groups if g.kind in ("hidden_channel", "kv_group", "mlp_channel")}
    assert len(keep["hidden_channel@all"]) == 36
    pruned, record = execute(c.model, c.trace, c.groups, keep)
    assert record.config == {"hidden_size": 36, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 50}
    plain = AutoModelForCausalLM.from_pretrained(save_pruned(pruned, tmp_path / "out", record)).eval()
    assert torch.equal(logits(plain, batch), logits(pruned, batch))


@pytest.mark.parametrize("arch", REFUSED)
def test_refused_combined_plan_is_one_line(arch):
    """No attribute update makes Karpathy's attention run without its heads: a one-line PlanError naming what was tried."""
    model = ZOO[arch].build()
    tr = trace(meta_copy(model))
    groups = find_groups(tr)
    keep = {**random_plan(groups, "hidden_channel"), **random_plan(groups, "combined")}
    with pytest.raises(PlanError) as e:
        execute(model, tr, groups, keep)
    assert isinstance(e.value, AttributeInferenceError)
    msg = str(e.value)
    assert "\n" not in msg
    assert "transformer.h.*.attn.n_head=6->2|4" in msg and "transformer.h.*.attn.n_embd=48->" in msg
    assert "last mismatch: TraceError: " in msg and "register_shape_adapter" in msg
