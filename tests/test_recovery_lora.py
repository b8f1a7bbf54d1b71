"""LoRA on pruned models whose layers differ in size: each adapter sized from its own layer, merged exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from depgraph import meta_copy, trace
from depgraph.groups import find_groups
from pruners import execute
from pruners.errors import UsageError
from recovery import LoraOptions, add_adapters, merge_adapters
from recovery.lora import adapted_layers

from zoo import random_plan, tiny_gpt2, tiny_llama


def per_layer_pruned(model):
    """``model`` with a different number of KV groups / heads and MLP channels kept in each layer."""
    tr = trace(meta_copy(model))
    groups = find_groups(tr)
    pruned, _ = execute(model, tr, groups, random_plan(groups, "combined"))
    return pruned


@pytest.fixture(params=["llama", "gpt2"])
def model(request):
    base = tiny_llama(intermediate_size=40) if request.param == "llama" else tiny_gpt2()
    return per_layer_pruned(base)


def layer_sizes(model, suffix):
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules()
            if n.endswith(suffix) and hasattr(m, "in_features")}


def test_the_pruned_layers_really_differ():
    m = per_layer_pruned(tiny_llama(intermediate_size=40))
    assert len(set(layer_sizes(m, "mlp.down_proj").values())) > 1


def test_every_adapter_is_sized_from_its_own_layer(model):
    wrapped = add_adapters(copy.deepcopy(model), LoraOptions(r=3))
    layers = adapted_layers(wrapped)
    assert layers, "no layer was adapted"
    for name, layer in layers.items():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (r, in), (out, r)
        assert a.shape == (3, layer.in_features) and b.shape == (layer.out_features, 3), name
    # every linear projection of the decoder, never the LM head
    assert not any(n.endswith("lm_head") for n in layers)


def test_merged_lora_equals_the_unmerged_peft_model(model):
    wrapped = add_adapters(copy.deepcopy(model), LoraOptions(r=4, alpha=8, dropout=0.05))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero (the wrapped model equals the base): give it values
        for layer in adapted_layers(wrapped).values():
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    wrapped.eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=g)
    with torch.no_grad():
        unmerged = wrapped(ids).logits
        base = model(ids).logits
        merged_model = merge_adapters(wrapped)
        merged = merged_model(ids).logits
    assert not torch.allclose(unmerged, base, atol=1e-3)  # the adapters do something
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert not adapted_layers(merged_model) and type(merged_model) is type(model)


def test_adapter_init_is_fixed_by_the_seed(model):
    a = add_adapters(copy.deepcopy(model), LoraOptions(), seed=3)
    b = add_adapters(copy.deepcopy(model), LoraOptions(), seed=3)
    c = add_adapters(copy.deepcopy(model), LoraOptions(), seed=4)
    sa, sb, sc = (dict(x.named_parameters()) for x in (a, b, c))
    lora = [n for n in sa if "lora_A" in n]
    assert lora and all(torch.equal(sa[n], sb[n]) for n in lora)
    assert not all(torch.equal(sa[n], sc[n]) for n in lora)


def test_targets_that_match_nothing_are_refused():
    with pytest.raises(UsageError, match="target_modules"):
        add_adapters(tiny_llama(), LoraOptions(target_modules=["no_such_proj"]))
