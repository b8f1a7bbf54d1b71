"""The layout algebra and group finding on hand-built graphs, with hand-listed expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from depgraph import trace
from depgraph.graph import build_graph, positions, term_key
from depgraph.groups import find_groups
from depgraph.layout import Cat, Factor, LayoutConflict, Prod, cut, resolve, unify
from depgraph.tracer import UnsupportedOpError


def test_unify_refines_free_factor_into_product():
    f, h, d = Factor(64), Factor(8), Factor(8)
    unify(f, Prod((h, d)))
    assert resolve(f) == Prod((h, d))


def test_cut_refines_into_concatenation_and_shares_factors():
    qkv = Factor(12)
    q, k = cut(qkv, 0, 4), cut(qkv, 4, 8)
    unify(q, k)  # e.g. gate * up from one fused projection
    r = resolve(qkv)
    assert isinstance(r, Cat) and r.children[0] is r.children[1]


def test_product_against_misaligned_concatenation_freezes_instead_of_guessing():
    a = Factor(6)
    unify(a, Cat((Factor(2), Factor(4))))
    with pytest.raises(LayoutConflict):
        unify(a, Prod((Factor(3), Factor(2))))
    assert all(f.frozen for f in [resolve(x) for x in resolve(a).children])


def test_positions_of_gqa_projection():
    kv, rep, d = Factor(2), Factor(2), Factor(3)
    G = build_graph_for(Prod((kv, rep, d)))
    pos = positions(G, ("param", "w", 0))
    assert pos[term_key(kv)][0].tolist() == [0] * 6 + [1] * 6
    assert pos[term_key(rep)][0].tolist() == [0, 0, 0, 1, 1, 1] * 2


def build_graph_for(term):
    from depgraph.ops.registry import TensorInfo
    from depgraph.tracer import Trace

    tr = Trace(params={"w": TensorInfo((12,), (term,))}, buffers={}, aliases={}, sites={}, data_terms=[],
               conflicts=[], graph=torch.fx.Graph(), num_nodes=0)
    return build_graph(tr, activations=False)


class TwoLayerMLP(nn.Module):
    """embed -> (fc1 -> relu -> fc2) residual -> head: hand-listed groups below."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 6)
        self.head = nn.Linear(6, 11, bias=False)

    def forward(self, idx):
        h = self.embed(idx)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h)


def test_hand_listed_groups_on_a_tiny_model():
    with torch.device("meta"):
        model = TwoLayerMLP()
    groups = {g.kind: g for g in find_groups(trace(model))}
    mlp = groups["mlp_channel"]
    assert mlp.n_units == 5
    assert sorted((m.param, m.axis) for m in mlp.members) == [("fc1.bias", 0), ("fc1.weight", 0), ("fc2.weight", 1)]
    assert mlp.unit_params == 6 + 1 + 6
    hidden = groups["hidden_channel"]
    assert hidden.n_units == 6 and hidden.layer is None
    assert sorted((m.param, m.axis) for m in hidden.members) == [
        ("embed.weight", 1), ("fc1.weight", 1), ("fc2.bias", 0), ("fc2.weight", 0), ("head.weight", 1)
    ]
    assert all(np.array_equal(m.indices(2), [2]) for m in hidden.members)


class UsesUnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)

    def forward(self, idx):
        return torch.fft.fft(self.embed(idx)).real


def test_unknown_op_fails_loudly_with_node_and_module():
    with torch.device("meta"):
        model = UsesUnknownOp()
    with pytest.raises(UnsupportedOpError) as e:
        trace(model)
    msg = str(e.value)
    assert "no depgraph handler for op" in msg and "fft" in msg and "%" in msg  # op name and format_node()
