"""More architecture classes under the masked-dense oracle (issue 8), with no per-architecture code.

* multi-query attention -- one KV head shared by every query head, fused ``c_attn`` = q then k, v:
  transformers' GPTBigCode (``multi_query=True``) and a hand-written nanoGPT-style module;
* a fused qkv interleaved per head (``view(B, T, heads, 3, head_dim)``): Falcon (``multi_query=False``)
  and a hand-written Bloom-style module with ALiBi slopes stored per head (a buffer, sliced with its
  head).  HF Bloom computes its ALiBi slopes from the head count (``arange``), so pruning heads would
  give the kept heads other slopes: its heads are frozen and only its MLP is pruned;
* parallel attention + plain GELU MLP blocks: GPT-J, Phi, and Falcon, whose ``FalconLinear`` is
  ``x @ W.T`` (a ``matmul``, not ``aten.linear``);
* activations with learned parameters: a per-channel ``nn.PReLU(num_parameters=ffn)`` (its weight is
  a member of the MLP channel group) and scalar-parametrised ones (``nn.PReLU()``, a learned-beta
  swish), whose parameter belongs to no group.

Sizes are those of ``test_architectures`` (vocab 97, hidden 48, 6 heads of head_dim 8); the per-unit
parameter counts below are written out by hand from each architecture.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from depgraph import UnsupportedOpError, trace
from depgraph.groups import KINDS, find_groups, layer_of
from depgraph.ops import HANDLERS, register
from pruners.pipeline import PruneConfig, prune

from zoo import (
    HEAD_DIM,
    HEADS,
    HIDDEN,
    LAYERS,
    NANO_FFN,
    NEW_ARCHS,
    SEQ_SHAPE,
    VOCAB,
    assert_oracle,
    logits,
    n_params,
    removed_masks,
)


def kinds_of(arch: str) -> list[str]:
    return (["mlp_channel"] if NEW_ARCHS[arch].heads_frozen else ["attention_head", "mlp_channel"]) + ["combined"]


CASES = [(a, k) for a in NEW_ARCHS for k in kinds_of(a)]
HF_CASES = [(a, k) for a, k in CASES if NEW_ARCHS[a].hf]


# -- groups ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(NEW_ARCHS))
def test_groups_found(traced, arch):
    spec, t = NEW_ARCHS[arch], traced(arch)
    assert not t.trace.conflicts, t.trace.conflicts
    expected = {"mlp_channel": (spec.mlp, spec.mlp_params)}
    if not spec.heads_frozen:
        expected["attention_head"] = (HEADS, spec.head_params)
    for layer in range(LAYERS):
        got = {g.kind: (g.n_units, g.unit_params) for g in t.groups if g.layer == layer}
        assert got == expected, f"layer {layer}"
        assert all(g.mask_equivalent for g in t.groups if g.layer == layer)
    model_wide = {g.kind: g for g in t.groups if g.layer is None}
    assert set(model_wide) <= {"hidden_channel", "vocab", "position"}
    assert model_wide["hidden_channel"].n_units == HIDDEN
    assert model_wide["vocab"].n_units == VOCAB  # the token-id embedding's rows
    if spec.positions:
        assert model_wide["position"].n_units == spec.positions
        assert [m.param for m in model_wide["position"].members] == [
            next(n for n, p in t.model.named_parameters() if p.shape == (spec.positions, HIDDEN))
        ]
    else:
        assert "position" not in model_wide


def test_kinds_are_documented():
    """Every kind a group has is in KINDS, and KINDS is explained in the module docstring."""
    import depgraph.groups

    assert "channel" not in KINDS and {"vocab", "position", "unplaced"} <= set(KINDS)
    for kind in KINDS:
        assert f"``{kind}``" in depgraph.groups.__doc__, kind


def test_bloom_alibi_heads_are_frozen(traced):
    """Bloom's ALiBi slopes come from ``arange`` over the heads: the head factor is frozen, never pruned."""
    t = traced("bloom")
    qkv = t.trace.params["transformer.h.0.self_attention.query_key_value.weight"]
    from depgraph.layout import factors

    heads = [f for f in factors(qkv.axes[0]) if f.size not in (3, HEAD_DIM)]  # Prod(heads..., 3, head_dim)
    assert heads and sum(f.size for f in heads) == HEADS and all(f.frozen for f in heads)


def test_interleaved_alibi_slopes_sliced_with_heads(traced, pruned):
    """Stored per-head ALiBi slopes are a buffer member of the head group and lose the removed heads."""
    t, p = traced("nanogpt_interleaved_alibi"), pruned("nanogpt_interleaved_alibi", "attention_head")
    group = next(g for g in t.groups if g.id == "attention_head@0")
    (slopes,) = [m for m in group.members if m.param == "transformer.h.0.attn.alibi_slopes"]
    assert slopes.kind == "buffer" and slopes.unit_of.tolist() == list(range(HEADS))
    # the fused rows are interleaved: head h owns rows [24h, 24h + 24) (its q, k and v)
    (rows,) = [m for m in group.members if m.param == "transformer.h.0.attn.c_attn.weight"]
    assert rows.indices(1).tolist() == list(range(3 * HEAD_DIM, 6 * HEAD_DIM))
    kept = p.keep["attention_head@0"]
    got = p.model.transformer.h[0].attn.alibi_slopes
    assert torch.equal(got, t.state["transformer.h.0.attn.alibi_slopes"][kept])


def test_activation_parameters(traced, pruned):
    """A per-channel PReLU weight is sliced with the MLP channels; a scalar one is in no group."""
    t = traced("nanogpt_prelu")
    mlp = next(g for g in t.groups if g.id == "mlp_channel@1")
    (w,) = [m for m in mlp.members if m.param == "transformer.h.1.mlp.gelu.weight"]
    assert w.unit_of.tolist() == list(range(NANO_FFN))
    p = pruned("nanogpt_prelu", "mlp_channel")
    kept = p.keep["mlp_channel@1"]
    assert torch.equal(p.model.transformer.h[1].mlp.gelu.weight, t.state["transformer.h.1.mlp.gelu.weight"][kept])
    for arch, name in [("nanogpt_prelu_scalar", "weight"), ("nanogpt_swish_scalar", "beta")]:
        t = traced(arch)
        members = {m.param for g in t.groups for m in g.members}
        assert f"transformer.h.0.mlp.gelu.{name}" not in members
        p = pruned(arch, "mlp_channel")
        assert p.model.transformer.h[0].mlp.gelu.get_parameter(name).numel() == 1


# -- masked-dense oracle ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch,kind", CASES)
def test_masked_dense_oracle(traced, pruned, batch, arch, kind):
    t, p = traced(arch), pruned(arch, kind)
    assert_oracle(t.model, t.groups, p.keep, p.model, batch)
    params = dict(t.model.named_parameters())
    removed = sum(int(m.sum()) for name, m in removed_masks(t.model, t.groups, p.keep).items() if name in params)
    assert n_params(p.model) == n_params(t.model) - removed
    by_id = {g.id: g for g in t.groups}
    by_units = sum((by_id[gid].n_units - len(k)) * by_id[gid].unit_params for gid, k in p.keep.items())
    assert removed == by_units
    now = t.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in t.state.items())  # the input model is left alone


@pytest.mark.parametrize("arch,kind", HF_CASES)
def test_generate_with_cache(pruned, batch, arch, kind):
    model = pruned(arch, kind).model
    kw = {"attention_mask": torch.ones_like(batch), "max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    with torch.no_grad():
        cached = model.generate(batch, use_cache=True, **kw)
        plain = model.generate(batch, use_cache=False, **kw)
    assert cached.shape == (SEQ_SHAPE[0], SEQ_SHAPE[1] + 5)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("arch,kind", HF_CASES)
def test_save_load_round_trip(pruned, batch, arch, kind, tmp_path):
    from pruners.io.checkpoint import load_model, save_pruned

    p = pruned(arch, kind)
    out = save_pruned(p.model, tmp_path / "out", p.record)
    attn = p.model.config._attn_implementation
    loaded = load_model(out, attn_implementation=attn)
    assert n_params(loaded) == n_params(p.model)
    assert torch.equal(logits(loaded, batch), logits(p.model, batch))


# -- the pipeline end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(NEW_ARCHS))
def test_pipeline_prune(traced, batch, arch):
    """``depprune prune --ratio 0.3`` (default kinds: attention and MLP channels) on every new model."""
    t = traced(arch)
    result = prune(t.model, PruneConfig(ratio=0.3), progress=False, analysis=(t.trace, t.groups))
    removed = result.params_before - result.params_after
    assert result.params_before == n_params(t.model)
    assert result.params_after == n_params(result.model)
    assert abs(removed / result.params_before - 0.3) < 0.03  # uniform plans round per group
    assert torch.isfinite(logits(result.model, batch)).all()
    kinds = {gid.split("@")[0] for gid in result.plan.keep}
    assert kinds == ({"mlp_channel"} if NEW_ARCHS[arch].heads_frozen else {"attention_head", "mlp_channel"})


def test_falcon_mlp_channels_are_mlp_channels(traced):
    """``FalconLinear`` is ``x @ W.T``: the channels between two of them are MLP channels, not unplaced."""
    t = traced("falcon")
    mlp = next(g for g in t.groups if g.id == "mlp_channel@0")
    assert [f"{m.param}:{m.axis}" for m in mlp.members] == [
        "transformer.h.0.mlp.dense_h_to_4h.weight:0",
        "transformer.h.0.mlp.dense_4h_to_h.weight:1",
    ]
    assert not [g for g in t.groups if g.kind == "unplaced"]


# -- ops whose shapes a handler does not understand -------------------------------------------------


class EllipsisEinsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.proj = nn.Parameter(torch.zeros(5, 6))

    def forward(self, idx):
        return torch.einsum("...i,ji->...j", self.embed(idx), self.proj)


def test_unsupported_shape_names_the_node():
    with torch.device("meta"):
        model = EllipsisEinsum()
    with pytest.raises(UnsupportedOpError) as e:
        trace(model)
    msg = str(e.value)
    assert "aten.einsum.default" in msg and "%einsum" in msg and "ellipsis" in msg and "'<root>'" in msg


@torch.library.custom_op("depprune_test::halve", mutates_args=())
def _halve(x: torch.Tensor) -> torch.Tensor:
    return x[..., : x.shape[-1] // 2].clone()


@_halve.register_fake
def _(x):
    return x.new_empty(*x.shape[:-1], x.shape[-1] // 2)


class UsesHalve(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)

    def forward(self, idx):
        return torch.ops.depprune_test.halve(self.embed(idx))


def test_handler_fault_becomes_unsupported_op_error():
    """A handler that indexes past its input's axes raises UnsupportedOpError naming the node, not IndexError."""

    @register("depprune_test.halve")
    def _bad(tr, node, x):
        return copy.copy(x.axes[5])  # an axis the (B, T, 6) input does not have

    try:
        with torch.device("meta"):
            model = UsesHalve()
        with pytest.raises(UnsupportedOpError) as e:
            trace(model)
    finally:
        del HANDLERS["depprune_test.halve"]
    msg = str(e.value)
    assert "depprune_test.halve.default" in msg and "%halve" in msg and "IndexError" in msg
    assert isinstance(e.value.__cause__, IndexError)


def test_layer_of_new_models(traced):
    """Every per-layer group of the new models lies in one layer (sanity for the parallel blocks)."""
    for arch in ("falcon", "gptj", "phi"):
        for g in traced(arch).groups:
            if g.layer is not None:
                assert {layer_of(m.param) for m in g.members} == {g.layer}, g.id


class CrossLayer(nn.Module):
    """A channel made by a linear map of layer 0 and read by one of layer 1: no MLP's own channel."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.layers = nn.ModuleList([nn.ModuleDict({"up": nn.Linear(6, 5)}), nn.ModuleDict({"down": nn.Linear(5, 6)})])
        self.head = nn.Linear(6, 11)

    def forward(self, idx):
        x = self.embed(idx)
        return self.head(x + self.layers[1]["down"](torch.relu(self.layers[0]["up"](x))))


def test_cross_layer_channel_is_unplaced():
    with torch.device("meta"):
        model = CrossLayer()
    groups = {g.id: g for g in find_groups(trace(model))}
    assert set(groups) == {"hidden_channel@all", "vocab@all", "vocab@all#1", "unplaced@all"}
    assert [m.param for m in groups["unplaced@all"].members] == [
        "layers.0.up.weight", "layers.0.up.bias", "layers.1.down.weight",
    ]
    assert [m.param for m in groups["vocab@all#1"].members] == ["head.weight", "head.bias"]  # the logits' rows
