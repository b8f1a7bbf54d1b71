"""Repeated decoder layers are traced once and replicated: the result equals tracing every layer.

The oracle is ``trace(model, repeats=False)``, which exports every layer.  Each architecture of
the zoo is built with five layers (the zoo's two would be traced whole anyway).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from torch import nn

from depgraph import meta_copy, trace
from depgraph.groups import find_groups
from depgraph.layout import Factor, resolve
from depgraph.repeats import layer_signatures, layer_stack, traced_prefix

from zoo import ARCHS, NEW_ARCHS, tiny_llama

ALL = {**ARCHS, **NEW_ARCHS}
LAYERS = 5


def layouts(tr) -> list:
    """Every parameter and buffer layout with factors numbered by first appearance (ids differ between traces)."""
    numbers: dict[Factor, int] = {}

    def canon(t):
        t = resolve(t)
        if isinstance(t, Factor):
            return ("F", numbers.setdefault(t, len(numbers)), t.size, t.frozen, t.origin)
        return (type(t).__name__, tuple(canon(c) for c in t.children))

    return [(name, info.shape, tuple(canon(t) for t in info.axes)) for table in (tr.params, tr.buffers) for name, info in table.items()]


def assert_same_trace(fast, full) -> None:
    """Same names, layouts, execution order, annotations and groups (members and units) as the full trace."""
    assert layouts(fast) == layouts(full)
    assert fast.order == full.order
    assert {k: [s["module"] for s in v] for k, v in fast.sites.items()} == {k: [s["module"] for s in v] for k, v in full.sites.items()}
    assert len(fast.conflicts) == len(full.conflicts)
    got, want = find_groups(fast), find_groups(full)
    assert [g.summary() for g in got] == [g.summary() for g in want]
    for g, h in zip(got, want):
        assert [(m.param, m.axis, m.kind, m.shape) for m in g.members] == [(m.param, m.axis, m.kind, m.shape) for m in h.members]
        assert all(np.array_equal(m.unit_of, n.unit_of) for m, n in zip(g.members, h.members)), g.id
        assert (g.mask_equivalent, g.units_per_block) == (h.mask_equivalent, h.units_per_block)


@pytest.mark.parametrize("arch", list(ALL))
def test_replicated_trace_equals_full_trace(arch):
    model = meta_copy(ALL[arch].build(layers=LAYERS))
    fast = trace(model)
    path, _ = layer_stack(model)
    # two layers traced, the other three copied from the first of them
    assert fast.replicated == {f"{path}.{i}": f"{path}.0" for i in range(2, LAYERS)}
    assert_same_trace(fast, trace(model, repeats=False))


def test_alternating_layers_trace_two_of_each():
    config = transformers.Qwen2Config(
        vocab_size=97, hidden_size=48, num_hidden_layers=7, num_attention_heads=6, num_key_value_heads=3,
        intermediate_size=80, use_sliding_window=True, sliding_window=4, max_window_layers=0,
        layer_types=["sliding_attention", "full_attention"] * 3 + ["sliding_attention"],
    )
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(config)
    signatures = layer_signatures(model.model.layers)
    assert signatures[0] != signatures[1] and signatures[0] == signatures[2] and traced_prefix(signatures) == 4
    fast = trace(model)
    assert fast.replicated == {"model.layers.4": "model.layers.0", "model.layers.5": "model.layers.1", "model.layers.6": "model.layers.0"}
    assert_same_trace(fast, trace(model, repeats=False))


def test_a_layer_of_another_width_is_traced_itself():
    model = meta_copy(tiny_llama(num_hidden_layers=5))
    narrow = copy.deepcopy(model.config)
    narrow.intermediate_size = 8
    model.model.layers[3].mlp = transformers.models.llama.modeling_llama.LlamaMLP(narrow).to("meta")
    fast = trace(model)
    assert fast.replicated == {"model.layers.4": "model.layers.0"}
    assert fast.params["model.layers.3.mlp.up_proj.weight"].shape == (8, 16)
    assert_same_trace(fast, trace(model, repeats=False))


def test_layer_index_attribute_does_not_tell_layers_apart():
    layers = tiny_llama(num_hidden_layers=3).model.layers
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2]
    assert len(set(layer_signatures(layers))) == 1


class Chain(nn.Module):
    """Embedding, a chain of identical linear layers without a residual, a head: each channel couples two layers."""

    def __init__(self, split_at: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(97, 16)
        self.layers = nn.ModuleList(Link(i == split_at) for i in range(5))
        self.head = nn.Linear(16, 97)

    def forward(self, input_ids):
        x = self.embed(input_ids)  # (B, T, 16)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class Link(nn.Module):
    def __init__(self, split: bool):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self._split = split  # private: not part of the signature, yet it changes the layouts

    def forward(self, x):
        y = self.fc(x)  # (B, T, 16)
        if self._split:
            B, T, _ = y.shape
            y = y.view(B, T, 4, 4).transpose(-1, -2).reshape(B, T, 16)  # a permutation of the channels
        return torch.relu(y) + x


def test_a_channel_shared_only_by_layers_falls_back_to_the_full_trace():
    class NoResidual(Link):
        def forward(self, x):
            return torch.relu(self.fc(x))  # (B, T, 16): this layer's output channels are the next one's inputs

    model = Chain()
    model.layers = nn.ModuleList(NoResidual(False) for _ in range(5))
    fast = trace(meta_copy(model))
    assert fast.replicated == {}
    assert_same_trace(fast, trace(meta_copy(model), repeats=False))


def test_traced_copies_that_differ_fall_back_to_the_full_trace():
    model = meta_copy(Chain(split_at=1))
    assert len(set(layer_signatures(model.layers))) == 1  # the signatures cannot see the difference
    fast = trace(model)
    assert fast.replicated == {}  # but the second traced copy does
    assert_same_trace(fast, trace(model, repeats=False))


def test_the_model_is_not_modified():
    model = meta_copy(tiny_llama(num_hidden_layers=4))
    before = [id(m) for m in model.modules()]
    trace(model)
    assert [id(m) for m in model.modules()] == before and len(model.model.layers) == 4
