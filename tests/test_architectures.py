"""Masked-dense oracle tests of tracing, group finding and execution across architectures.

Nine HF architectures (Llama GQA and MHA, Mistral -- also with eager attention --, Qwen2, Phi-3,
Gemma, GPT-2, GPT-NeoX, OPT) and a hand-written nanoGPT traced with no registration (two
attention styles).  Every model is a tiny random one built from a config here (nothing is
downloaded).  For the *exact* kinds (attention heads, KV groups, query heads, MLP channels) the
physically pruned model must reproduce, to fp32 round-off, an independent reference: a deep
copy of the original in which every member slice of every removed unit is zeroed.  Hidden
channels run through norms, so masking them is not equivalent to removing them; for those,
shapes, finiteness, generation and the (exact) input of the first block are checked.

The models, their hand-derived unit costs and the oracle live in the test zoo (``tests/zoo.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from depgraph.groups import layer_of
from pruners.slicing.attributes import AttributeInferenceError
from pruners.slicing.executor import execute

from zoo import (
    ARCHS,
    HEADS,
    HIDDEN,
    LAYERS,
    SEQ_SHAPE,
    VOCAB,
    assert_oracle,
    attr_snapshot,
    exact_kinds,
    logits,
    n_params,
    random_plan,
    removed_masks,
)

EXACT_CASES = [(a, k) for a in ARCHS for k in exact_kinds(a)]
ALL_CASES = EXACT_CASES + [(a, "hidden_channel") for a in ARCHS if "hidden_channel" not in ARCHS[a].refused]
REFUSED_CASES = [(a, k) for a in ARCHS for k in ARCHS[a].refused]


def first_block(model: nn.Module) -> str:
    """Path of the module holding every layer-0 parameter (``model.layers.0``, ``transformer.h.0``)."""
    names = [n.split(".") for n, _ in model.named_parameters() if layer_of(n) == 0]
    prefix = names[0]
    for parts in names[1:]:
        k = 0
        while k < min(len(prefix), len(parts)) and prefix[k] == parts[k]:
            k += 1
        prefix = prefix[:k]
    return ".".join(prefix)


def block_input(model: nn.Module, path: str, ids: torch.Tensor) -> torch.Tensor:
    """The hidden states passed to the module at ``path`` during a forward pass."""
    seen = []

    def hook(mod, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])

    handle = model.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        logits(model, ids)
    finally:
        handle.remove()
    return seen[0]


# -- 1. groups ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_groups_found(traced, arch):
    spec, t = ARCHS[arch], traced(arch)
    assert not t.trace.conflicts, t.trace.conflicts
    expected_layer = {"mlp_channel": (spec.mlp, None, spec.mlp_params)}
    if spec.kv_heads:
        expected_layer["kv_group"] = (spec.kv_heads, None, spec.head_params)
        expected_layer["query_head"] = (HEADS, HEADS // spec.kv_heads, spec.query_params)
    else:
        expected_layer["attention_head"] = (HEADS, None, spec.head_params)
    for layer in range(LAYERS):
        got = {g.kind: (g.n_units, g.units_per_block, g.unit_params) for g in t.groups if g.layer == layer}
        assert got == expected_layer, f"layer {layer}"
        for g in (g for g in t.groups if g.layer == layer):
            assert g.mask_equivalent, g.id
            assert {layer_of(m.param) for m in g.members} == {layer}, g.id
    hidden = [g for g in t.groups if g.kind == "hidden_channel"]
    assert len(hidden) == 1
    assert hidden[0].layer is None and hidden[0].n_units == HIDDEN and not hidden[0].mask_equivalent
    # the hidden group reaches every layer and the embedding
    assert {layer_of(m.param) for m in hidden[0].members} >= set(range(LAYERS)) | {None}
    # nothing else is pruned by default: other groups are whole-model vocabulary and position rows
    assert {g.kind for g in t.groups if g.layer is None} <= {"hidden_channel", "vocab", "position"}
    assert {g.layer for g in t.groups} == set(range(LAYERS)) | {None}


# -- 2. masked-dense oracle for the exact kinds --------------------------------------------------


@pytest.mark.parametrize("arch,kind", EXACT_CASES)
def test_masked_dense_oracle(traced, pruned, batch, arch, kind):
    t, p = traced(arch), pruned(arch, kind)
    assert_oracle(t.model, t.groups, p.keep, p.model, batch)

    # parameter count: from the groups' unit sizes, and from the masked positions
    by_id = {g.id: g for g in t.groups}
    param_names = dict(t.model.named_parameters())
    removed_positions = sum(int(m.sum()) for name, m in removed_masks(t.model, t.groups, p.keep).items()
                            if name in param_names)
    assert n_params(p.model) == n_params(t.model) - removed_positions
    if kind != "combined":  # in a combined plan a query head inside a removed KV group is in both
        by_units = sum((by_id[gid].n_units - len(k)) * by_id[gid].unit_params for gid, k in p.keep.items())
        assert n_params(p.model) == n_params(t.model) - by_units


@pytest.mark.parametrize("arch,kind", EXACT_CASES)
def test_pruned_shapes(traced, pruned, arch, kind):
    """Shapes follow the plan: every member axis keeps (units kept) * (positions per unit)."""
    t, p = traced(arch), pruned(arch, kind)
    params = dict(p.model.named_parameters())
    params.update(dict(p.model.named_buffers()))
    orig = dict(t.model.named_parameters())
    orig.update(dict(t.model.named_buffers()))
    expected: dict[tuple[str, int], int] = {}
    for name, mask in removed_masks(t.model, t.groups, p.keep).items():
        for axis in range(mask.ndim):
            other = tuple(d for d in range(mask.ndim) if d != axis)
            gone = mask.all(dim=other) if other else mask
            expected[(name, axis)] = orig[name].shape[axis] - int(gone.sum())
    for (name, axis), n in expected.items():
        assert params[name].shape[axis] == n, (name, axis)
    assert expected and any(orig[name].shape[axis] != n for (name, axis), n in expected.items())


# -- 3. hidden channels ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [a for a, k in ALL_CASES if k == "hidden_channel"])
def test_hidden_channels(traced, pruned, batch, arch):
    # Hidden channels pass through RMSNorm/LayerNorm, whose statistics are taken over every
    # channel: zeroing a channel is not the same as removing it, so there is no exact oracle for
    # the logits.  Check instead that shapes shrink as planned, logits stay finite, generation runs,
    # and -- exact, since no norm has been applied yet -- that the residual stream entering the
    # first block is the original one restricted to the kept channels.
    t, p = traced(arch), pruned(arch, "hidden_channel")
    (gid, kept), = p.keep.items()
    group = next(g for g in t.groups if g.id == gid)
    params = dict(p.model.named_parameters())
    params.update(dict(p.model.named_buffers()))
    orig = dict(t.model.named_parameters())
    orig.update(dict(t.model.named_buffers()))
    removed = sorted(set(range(group.n_units)) - set(kept))
    assert len(group.members) > 3 * LAYERS
    for m in group.members:
        gone = sum(len(m.indices(u)) for u in removed)
        assert gone > 0, m.param
        assert params[m.param].shape[m.axis] == orig[m.param].shape[m.axis] - gone, (m.param, m.axis)
    out = logits(p.model, batch)
    assert out.shape == (*SEQ_SHAPE, VOCAB)
    assert torch.isfinite(out).all()

    embedding = next(n for n, mod in t.model.named_modules() if isinstance(mod, nn.Embedding)
                     and mod.num_embeddings == VOCAB)
    (emb,) = [m for m in group.members if m.param == f"{embedding}.weight"]
    channels = torch.as_tensor(np.flatnonzero(np.isin(emb.unit_of, kept)))
    block = first_block(t.model)
    want = block_input(t.model, block, batch).index_select(-1, channels)
    got = block_input(p.model, block, batch)
    assert got.shape == (*SEQ_SHAPE, len(kept)) and got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-6
    # generate() on this pruned model (HF architectures): test_generate_with_cache[<arch>-hidden_channel]


# -- 4. generation with the KV cache -----------------------------------------------------------


@pytest.mark.parametrize("arch,kind", [(a, k) for a, k in ALL_CASES if ARCHS[a].hf])
def test_generate_with_cache(pruned, batch, arch, kind):
    model = pruned(arch, kind).model
    kw = {"attention_mask": torch.ones_like(batch), "max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    with torch.no_grad():
        cached = model.generate(batch, use_cache=True, **kw)
        plain = model.generate(batch, use_cache=False, **kw)
    assert cached.shape == (SEQ_SHAPE[0], SEQ_SHAPE[1] + 5)
    assert torch.equal(cached[:, : SEQ_SHAPE[1]], batch)
    assert torch.equal(cached, plain)


# -- 5. the input model is left alone ----------------------------------------------------------


@pytest.mark.parametrize("arch,kind", ALL_CASES)
def test_input_model_unchanged(traced, pruned, arch, kind):
    t = traced(arch)
    pruned(arch, kind)  # make sure this plan was executed
    now = t.model.state_dict()
    assert now.keys() == t.state.keys()
    for k, v in t.state.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k
    assert attr_snapshot(t.model) == t.attrs
    assert all(p.device.type == "cpu" for p in t.model.parameters())


@pytest.mark.parametrize("arch,kind", ALL_CASES)
def test_pruned_copy_owns_its_tensors(traced, pruned, arch, kind):
    """The copy is built from the source's slices and clones, no meta tensor left and no memory shared; tied stays tied."""
    t, p = traced(arch), pruned(arch, kind)
    source = {x.untyped_storage().data_ptr() for x in [*t.model.parameters(), *t.model.buffers()]}
    tensors = [*p.model.parameters(), *p.model.buffers()]
    assert all(x.device.type == "cpu" for x in tensors)
    assert not source & {x.untyped_storage().data_ptr() for x in tensors if x.numel()}
    for names in t.trace.aliases.values():
        params = [p.model.get_parameter(n) for n in names]
        assert all(q is params[0] for q in params), names


# -- plans that cannot be executed are refused, not carried out wrongly --------------------------


@pytest.mark.parametrize("arch,kind", REFUSED_CASES)
def test_refused(traced, arch, kind):
    t = traced(arch)
    with pytest.raises(AttributeInferenceError):
        execute(t.model, t.trace, t.groups, random_plan(t.groups, kind))
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, t.state[k]), k
    assert attr_snapshot(t.model) == t.attrs


@pytest.mark.parametrize("arch,kind", [(a, k) for a, k in ALL_CASES if ARCHS[a].hf])
def test_save_load_round_trip(pruned, batch, arch, kind, tmp_path):
    """The saved directory reloads (through its depprune record, or as a plain HF model when the
    config can say it) into a model with bit-identical logits and the same parameter count."""
    from pruners.io.checkpoint import load_model, save_pruned

    p = pruned(arch, kind)
    out = save_pruned(p.model, tmp_path / "out", p.record)
    attn = p.model.config._attn_implementation  # a runtime choice transformers does not save
    loaded = load_model(out, attn_implementation=attn)
    assert sum(x.numel() for x in loaded.parameters()) == sum(x.numel() for x in p.model.parameters())
    assert torch.equal(logits(loaded, batch), logits(p.model, batch))
    if p.record.config:
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(out, attn_implementation=attn).eval()
        assert torch.equal(logits(plain, batch), logits(p.model, batch))
