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


def with_activation_memory(config, activation_memory):
    return config.model_copy(update={"calibration": config.calibration.model_copy(update={"activation_memory": activation_memory})})


@pytest.mark.parametrize(("importance", "activation_memory"), [("taylor-element", 0), ("taylor-vector", 0), ("taylor-element", 100.0)])
@pytest.mark.parametrize("arch", list(ALL))
def test_layer_by_layer_scores_equal_whole_model_scores(arch, importance, activation_memory, monkeypatch):
    """Each layer run again from its kept input (0), or differentiated from the forward pass (100x the weights)."""
    model = ALL[arch].build(layers=3)
    groups = find_groups(trace(meta_copy(model)))
    config = with_activation_memory(PruneConfig(ratio=0.2, importance=importance), activation_memory)
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


def saved_bytes_of_one_layer(model, ids):
    """What autograd saves for decoder layer 0 on ``ids`` (parameters aside), counted independently of depprune."""
    caught = []
    hook = model.model.layers[0].register_forward_pre_hook(lambda m, a, k: caught.append((a, k)), with_kwargs=True)
    with torch.no_grad():
        model(ids, use_cache=False)
    hook.remove()
    args, kwargs = caught[0]
    hidden = kwargs.pop("hidden_states", None)
    hidden = (args[0] if hidden is None else hidden).detach().clone().requires_grad_(True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
        model.model.layers[0](hidden, *args[1:], **kwargs)
    return sum(storages.values())


@pytest.mark.parametrize(("layers_in_budget", "run_again"), [(0, [0, 1, 2, 3]), (2.5, [2, 3]), (4.5, []), (1e6, [])])
def test_layers_whose_activations_fit_are_differentiated_from_the_forward_pass(layers_in_budget, run_again):
    """Budget in layers' worth of saved activations: the first layers that fit run once, the rest twice."""
    model = tiny_llama(num_hidden_layers=4)
    batch = torch.cat(SAMPLES)  # the samples run side by side: one micro-batch
    budget = int(layers_in_budget * saved_bytes_of_one_layer(model, batch))
    calls = [0] * 4
    hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, layer in enumerate(model.model.layers)]
    want = collect_signals(model, SAMPLES, {"grad"}, progress=False).grad
    calls[:] = [0] * 4
    got = {}

    def on_layer(names):
        got.update({n: sig.grad.pop(n) for n in names})

    sig = signals_module.Signals()
    collect_signals(model, SAMPLES, {"grad"}, progress=False, on_layer=on_layer, into=sig, keep_bytes=budget)
    for h in hooks:
        h.remove()
    got.update(sig.grad)
    # one call of each layer in the chain check's probe, one in the forward pass, one more for each layer run
    # again, and layer 0 one more: the embeddings' pass stops at its input
    assert calls == [(3 if i in run_again else 2) + (i == 0) for i in range(4)]
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.is_grad_enabled()  # the forward pass's switches are undone


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


@pytest.mark.parametrize(
    ("activation_memory", "inplace", "expected"),
    [("auto", False, 0.75), ("auto", True, 0.0), (0.3, False, 0.3), (0.3, True, 0.3), (0, False, 0.0)],
)
def test_activation_memory_auto_is_the_pruned_models_size_in_a_prune_that_writes_one(
    activation_memory, inplace, expected, monkeypatch
):
    from pruners import prune

    model = tiny_llama(num_hidden_layers=2)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    seen = []
    real = signals_module.layerwise_gradients

    def recording(*args, **kwargs):
        seen.append(args[-1] if len(args) == 7 else kwargs["keep_bytes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(signals_module, "layerwise_gradients", recording)
    config = with_activation_memory(PruneConfig(ratio=0.25, importance="taylor-element"), activation_memory)
    prune(model, config, progress=False, samples=SAMPLES, inplace=inplace)
    assert seen == [int(expected * weights)]


def test_activation_memory_auto_is_none_when_only_scoring(monkeypatch):
    model = tiny_llama(num_hidden_layers=2)
    seen = []
    real = signals_module.layerwise_gradients
    monkeypatch.setattr(signals_module, "layerwise_gradients", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    groups = find_groups(trace(meta_copy(model)))
    member_scores(model, groups, PruneConfig(ratio=0.2, importance="taylor-element"), SAMPLES, progress=False)
    assert seen == [0]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "all"])
def test_a_bad_activation_memory_is_refused_naming_it(bad):
    from pydantic import ValidationError

    from pruners.config import CalibrationConfig

    with pytest.raises(ValidationError, match="activation_memory"):
        CalibrationConfig(activation_memory=bad)


def test_activation_memory_auto_under_kind_ratios_is_the_pruned_models_size(monkeypatch):
    from pruners import prune

    model = tiny_llama(num_hidden_layers=2)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    seen = []
    real = signals_module.layerwise_gradients
    monkeypatch.setattr(signals_module, "layerwise_gradients", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    result = prune(model, PruneConfig(kind_ratios={"mlp_channel": 0.5}, importance="taylor-element"), progress=False,
                   samples=SAMPLES)
    assert seen == [int(result.params_after / result.params_before * weights)]
