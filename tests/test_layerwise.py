"""Gradients one decoder layer at a time: the same scores as back-propagating the whole model, fewer gradients held.

The oracle is the ordinary collection (every sample through the whole model, every scored
weight's gradient summed), scored group by group.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pruners.importance.signals as signals_module
from depgraph import meta_copy, trace
from depgraph.groups import find_groups
from pruners import PruneConfig, member_scores
from pruners.importance import collect_signals
from pruners.importance.layerwise import chain_problem, layerwise_gradients

from zoo import ARCHS, NEW_ARCHS, VOCAB, tiny_llama

ALL = {**ARCHS, **NEW_ARCHS}
SAMPLES = [torch.randint(3, VOCAB, (1, 9), generator=torch.Generator().manual_seed(s)) for s in range(3)]


def whole_model_scores(model, groups, config):
    """The oracle: signals collected the ordinary way, then scored."""
    scored = {m.param for g in groups for m in g.members}
    sig = collect_signals(model, SAMPLES, {"grad"}, progress=False, params=scored)
    return member_scores(model, groups, config, progress=False, signals=sig)


def no_whole_model_pass(*args, **kwargs):
    raise AssertionError("the ordinary sample-by-sample backward ran: the layers were not taken one at a time")


@pytest.mark.parametrize("importance", ["taylor-element", "taylor-vector"])
@pytest.mark.parametrize("arch", list(ALL))
def test_layer_by_layer_scores_equal_whole_model_scores(arch, importance, monkeypatch):
    model = ALL[arch].build(layers=3)
    groups = find_groups(trace(meta_copy(model)))
    config = PruneConfig(ratio=0.2, importance=importance)
    want = whole_model_scores(model, groups, config)
    monkeypatch.setattr(signals_module, "_run_samples", no_whole_model_pass)
    got = member_scores(model, groups, config, SAMPLES, progress=False)
    assert got.keys() == want.keys()
    for gid in want:
        # float rounding of batched matrix products; a signed (vector) sum can cancel to near zero, so the
        # absolute tolerance follows the group's largest score
        scale = float(want[gid].nan_to_num().abs().max())
        torch.testing.assert_close(got[gid], want[gid], rtol=1e-4, atol=1e-5 * scale, equal_nan=True, msg=gid)
    assert all(p.grad is None for p in model.parameters())


def test_at_most_one_layer_of_gradients_is_held():
    model = tiny_llama(num_hidden_layers=4)
    wanted = dict(model.named_parameters())
    per_layer = len(list(model.model.layers[0].parameters()))
    outside = len(wanted) - 4 * per_layer
    held, handed = [], []
    sig = signals_module.Signals()

    def on_layer(names):
        held.append(len(sig.grad))
        handed.append(sorted(names))
        for n in names:
            sig.grad.pop(n)

    collect_signals(model, SAMPLES, {"grad"}, progress=False, on_layer=on_layer, into=sig)
    assert handed == [sorted(n for n in wanted if n.startswith(f"model.layers.{i}.")) for i in (3, 2, 1, 0)]
    assert max(held) <= per_layer + outside  # one layer's gradients, and those of the weights outside the stack
    assert set(sig.grad) == {n for n in wanted if not n.startswith("model.layers.")}


class Averaged(nn.Module):
    """The logits read every layer's output (their mean): not a plain chain."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(16, VOCAB)

    def forward(self, input_ids):
        x, outs = self.embed(input_ids), []  # (B, T, 16)
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return self.head(torch.stack(outs).mean(0))  # (B, T, vocab)


def test_a_model_that_is_not_a_plain_chain_is_refused_and_scored_the_ordinary_way():
    torch.manual_seed(0)
    model = Averaged()
    wanted = dict(model.named_parameters())
    assert chain_problem(model, model.layers, wanted, SAMPLES[0]) == "what follows the stack reads a layer before the last"
    assert layerwise_gradients(model, SAMPLES, wanted, {}, lambda names: None, progress=False) is not None
    scored = set(wanted)
    plain = collect_signals(model, SAMPLES, {"grad"}, progress=False, params=scored)
    calls = []
    got = collect_signals(model, SAMPLES, {"grad"}, progress=False, params=scored, on_layer=calls.append)
    assert calls == []
    for name in wanted:
        torch.testing.assert_close(got.grad[name], plain.grad[name])
