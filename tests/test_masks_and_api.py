"""The plan on the dense model (masks, learnable gates) and the public API: ``pruners`` names, ``load_pruned``."""

from __future__ import annotations

import pytest
import torch

import pruners
from depgraph import meta_copy, trace
from depgraph.groups import find_groups
from pruners import attach_gates, execute, load_pruned, remove_gates, save_pruned
from pruners.errors import NonFiniteError

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


def overflowing_llama():
    """Finite weights whose logits overflow: an LM head of 1e38s (every logit is +-inf or NaN)."""
    model = ARCHS["llama_gqa"].build()
    with torch.no_grad():
        model.lm_head.weight.fill_(1e38)
    assert torch.isfinite(model.lm_head.weight).all() and not torch.isfinite(logits(model)).all()
    return model


@pytest.mark.parametrize("inplace", [False, True])
def test_a_source_model_with_non_finite_logits_is_refused_naming_it(inplace):
    model = overflowing_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match="^the source model gives non-finite logits") as e:
        pruners.prune(model, pruners.PruneConfig(ratio=0.2, importance="l2"), progress=False, inplace=inplace)
    assert "--allow-nonfinite" in str(e.value)
    if not inplace:  # the input model is left as it was
        after = model.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_non_finite_logits_are_allowed_on_request():
    config = pruners.PruneConfig(ratio=0.2, importance="l2", allow_nonfinite=True)
    assert pruners.prune(overflowing_llama(), config, progress=False).params_after > 0


def test_the_pruned_models_non_finite_logits_are_refused_naming_it(monkeypatch):
    """A pruned model that overflows where its source did not: the message names the pruned model."""
    import pruners.pipeline as pipeline

    real = pipeline.execute

    def overflowing(*args, **kwargs):
        pruned, record = real(*args, **kwargs)
        with torch.no_grad():
            pruned.lm_head.weight.fill_(1e38)
        return pruned, record

    monkeypatch.setattr(pipeline, "execute", overflowing)
    with pytest.raises(NonFiniteError, match="^the pruned model gives non-finite logits"):
        pruners.prune(ARCHS["llama_gqa"].build(), pruners.PruneConfig(ratio=0.2, importance="l2"), progress=False)


def test_a_source_with_non_finite_logits_is_named_when_its_scores_are_refused():
    """Taylor of an overflowing source gives NaN scores: the source is named, not the estimator."""
    samples = [torch.randint(3, 90, (1, 9), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    with pytest.raises(NonFiniteError, match="^the source model gives non-finite logits"):
        pruners.prune(overflowing_llama(), pruners.PruneConfig(ratio=0.2, importance="taylor-element"), progress=False,
                      samples=samples)
