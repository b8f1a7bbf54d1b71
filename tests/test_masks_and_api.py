"""The plan on the dense model (masks, learnable gates) and the public API: ``pruners`` names, ``load_pruned``."""

from __future__ import annotations

import pytest
import torch

import pruners
from depgraph import meta_copy, trace
from depgraph.groups import find_groups
from pruners import attach_gates, execute, load_pruned, remove_gates, save_pruned

from zoo import ARCHS, STORIES, masked_reference, random_plan

IDS = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def llama():
    model = ARCHS["llama_gqa"].build()
    tr = trace(meta_copy(model))
    return model, tr, find_groups(tr)


def test_gates_at_one_are_the_dense_model_and_at_zero_the_masked_plan(llama):
    model, tr, groups = llama
    keep = random_plan(groups, "combined")
    planned = [g for g in groups if g.id in keep]
    gated = ARCHS["llama_gqa"].build()  # the same seed: the same weights
    gates = attach_gates(gated, planned)
    assert set(gates) == set(keep) and all(g.dtype == torch.float32 for g in gates.values())
    assert torch.allclose(logits(gated), logits(model), atol=1e-6)
    with torch.no_grad():
        for gid, gate in gates.items():
            gone = sorted(set(range(len(gate))) - set(keep[gid]))
            gate[gone] = 0.0
    pruned, _ = execute(model, tr, groups, keep)
    want = logits(masked_reference(model, groups, keep))
    assert torch.allclose(logits(gated), want, atol=1e-5)
    assert torch.allclose(logits(pruned), want, atol=1e-5)  # the oracle: slicing == masking == gating


def test_gates_learn_and_come_off(llama):
    model, _, groups = llama
    gated = ARCHS["llama_gqa"].build()
    mlp = [g for g in groups if g.kind == "mlp_channel"]
    gates = attach_gates(gated, mlp, init=0.5)
    gated(IDS).logits.float().pow(2).mean().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates.values())
    remove_gates(gated)  # the original weights, untouched by the gates
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in gated.modules())
    assert torch.allclose(logits(gated), logits(model), atol=1e-6)


def test_gates_can_be_baked_into_the_weights(llama):
    model, _, groups = llama
    mlp = [g for g in groups if g.kind == "mlp_channel"]
    gated = ARCHS["llama_gqa"].build()
    gates = attach_gates(gated, mlp)
    keep = {g.id: list(range(0, g.n_units, 2)) for g in mlp}
    with torch.no_grad():
        for g in mlp:
            gates[g.id][1::2] = 0.0
    remove_gates(gated, bake=True)
    assert torch.allclose(logits(gated), logits(masked_reference(model, groups, keep)), atol=1e-5)


def test_every_public_name_resolves():
    for name in pruners.__all__:
        assert getattr(pruners, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        pruners.nope  # noqa: B018


@pytest.mark.shared
def test_load_pruned_returns_the_model_and_its_record(tmp_path):
    model = pruners.load_model(STORIES)
    result = pruners.prune(model, pruners.PruneConfig(ratio=0.2), progress=False)
    out = save_pruned(result.model, tmp_path / "p", result.record, source=STORIES)
    loaded, record = load_pruned(out)
    assert record == result.record
    ids = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(loaded, ids), logits(result.model, ids))
    with pytest.raises(pruners.DeppruneError, match="was not written by depprune; load it with load_model"):
        load_pruned(STORIES)
