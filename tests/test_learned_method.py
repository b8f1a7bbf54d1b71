"""learned/: compresso end to end -- gates on LoRA-adapted models, the export, the norms, the training and the CLI.

The oracle: a gated, adapted model with its gates at exactly 0/1 computes the logits of the model
the export writes (adapters merged, sliced, hidden-width norms matched).  The training run is
judged by the expected sparsity it reaches and by the real parameter count of the export.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from learned import CompressoConfig, compresso
from learned.adapted_gates import adapted_groups
from learned.export import export, kept_units
from learned.gates import HardConcreteGates
from learned.norms import UnmatchableNormError, check_matchable, match_norm
from learned.prompt import prompt_ids
from learned.train import Sparsity
from pruners import PruneConfig, attach_gate_source, count_params, load_model, load_tokenizer, select_groups
from pruners.cli import main
from pruners.pipeline import analyze
from recovery import IGNORE, LoraOptions, add_adapters

from zoo import ARCHS, NEW_ARCHS, STORIES, TINYSTORIES_TRAIN, fix_gates, logits, random_plan

CASES = [  # (architecture, kinds gated together)
    ("llama_gqa", ("kv_group", "mlp_channel")),
    ("llama_gqa", ("kv_group", "mlp_channel", "hidden_channel")),
    ("qwen2", ("kv_group", "mlp_channel", "hidden_channel")),
    ("phi3", ("kv_group", "mlp_channel", "hidden_channel")),  # fused qkv and gate_up: one LoRA per fused weight
    ("llama_mha", ("attention_head", "hidden_channel")),
]


def _gated_adapted(model, chosen, keep, seed=0):
    """``model`` with LoRA (B random, so the adapters matter) and hard-concrete gates fixed to the 0/1 plan ``keep``."""
    peft_model = add_adapters(model, LoraOptions(r=4, dropout=0.0), seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    base = peft_model.get_base_model()
    gates = HardConcreteGates(chosen)
    attach_gate_source(base, adapted_groups(base, chosen), gates)
    fix_gates(gates, chosen, keep)
    peft_model.eval()
    return peft_model, gates


def _tiny_eps(model):
    """The norms' epsilon made negligible, as it is beside a trained model's hidden states.

    With hidden channels removed, epsilon's share of the mean square is the one thing the
    matched norms cannot carry (it weighs ``D / D'`` more in the sliced model); the random
    weights of the zoo give hidden states so small that it would show.  stories260K, below,
    keeps its own epsilon.
    """
    for m in model.modules():
        for attr in ("variance_epsilon", "eps"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 1e-12)
    return model


@pytest.mark.parametrize("arch, kinds", [*CASES, pytest.param("stories260K", ("kv_group", "mlp_channel", "hidden_channel"),
                                                              marks=pytest.mark.shared)])
def test_the_gated_adapted_model_at_0_1_is_the_exported_model(arch, kinds):
    if arch == "stories260K":
        from zoo import require_shared

        model = load_model(require_shared())
    else:
        model = _tiny_eps({**ARCHS, **NEW_ARCHS}[arch].build())
    tr, groups = analyze(model)
    keep = {}
    for kind in kinds:
        keep |= random_plan(groups, kind, seed=1)
    chosen = [g for g in groups if g.id in keep]
    peft_model, gates = _gated_adapted(copy.deepcopy(model), chosen, keep)
    assert kept_units(gates, chosen) == {gid: sorted(units) for gid, units in keep.items()}
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits.float()  # (B, T, V)
    atol = 2e-5 * max(1.0, float(want.abs().max()))
    ungated, _ = _gated_adapted(copy.deepcopy(model), chosen, {})
    with torch.no_grad():
        assert not torch.allclose(ungated(input_ids=ids).logits.float(), want, atol=1e-3)  # the plan matters
    pruned, record, norms = export(peft_model, tr, groups, keep)
    assert count_params(pruned) < count_params(model)
    assert not any("lora" in n for n, _ in pruned.named_parameters())
    torch.testing.assert_close(logits(pruned, ids).float(), want, rtol=1e-4, atol=atol)
    assert bool(norms) == ("hidden_channel" in kinds)


def test_without_gating_the_adapters_a_removed_unit_would_stay_alive():
    """The reason for learned/adapted_gates.py: gating only the base weights leaves ``s B A`` of a removed unit."""
    model = ARCHS["llama_gqa"].build()
    tr, groups = analyze(model)
    keep = random_plan(groups, "mlp_channel", seed=0)
    chosen = [g for g in groups if g.id in keep]
    peft_model, _ = _gated_adapted(copy.deepcopy(model), [], {})
    base = peft_model.get_base_model()
    renamed = [  # base weights only
        type(g)(g.id, g.kind, g.layer, g.n_units, [m for m in a.members if "lora_" not in m.param], g.unit_params,
                g.mask_equivalent, g.factors)
        for g, a in zip(chosen, adapted_groups(base, chosen))
    ]
    gates = HardConcreteGates(chosen)
    attach_gate_source(base, renamed, gates)
    fix_gates(gates, chosen, keep)
    peft_model.eval()
    ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gated = peft_model(input_ids=ids).logits.float()
    pruned, _, _ = export(peft_model, tr, groups, keep)
    assert not torch.allclose(logits(pruned, ids).float(), gated, atol=1e-4)


def test_kept_units_keep_the_expected_count_of_the_largest_log_alphas():
    from depgraph.groups import Group, Member

    g = Group("m", "mlp_channel", 0, 6, [Member("w", 0, np.arange(6), shape=(6, 2))], 2, True, ())
    gates = HardConcreteGates([g])
    la = torch.tensor([3.0, -9.0, 9.0, 0.5, -9.0, 8.0])
    with torch.no_grad():
        gates.gates["m"].log_alpha.copy_(la)
    expected = round(float(gates.gates["m"].expected_l0().detach()))
    assert expected == 4
    assert kept_units(gates, [g]) == {"m": [0, 2, 3, 5]}
    assert kept_units(gates, [g], round_to=3) == {"m": [0, 2, 5]}  # 4 rounds to 3
    with torch.no_grad():
        gates.gates["m"].log_alpha.fill_(-10.0)
    assert kept_units(gates, [g], min_units=2) == {"m": [0, 1]}  # all closed: at least min_units, ties by index
    with torch.no_grad():
        gates.gates["m"].log_alpha.fill_(10.0)
    assert kept_units(gates, [g]) == {}  # every unit stays: the group is not cut


class GemmaStyleNorm(nn.Module):
    """``(1 + w) * x / rms(x)``: the output is affine, not linear, in the weight."""

    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(3)) * 0.1)
        self.eps = eps

    def forward(self, x):
        return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


@pytest.mark.parametrize("norm", ["llama", "gemma", "layernorm"])
def test_a_norm_over_the_hidden_width_is_matched_or_refused(norm):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    width, kept = 16, torch.tensor([0, 2, 3, 7, 8, 11, 15])
    if norm == "llama":
        dense = LlamaRMSNorm(width, eps=1e-5)
        with torch.no_grad():
            dense.weight.copy_(torch.rand(width) + 0.5)
    elif norm == "gemma":
        dense = GemmaStyleNorm(width)
    else:
        dense = nn.LayerNorm(width)
    sliced = copy.deepcopy(dense)
    sliced.weight = nn.Parameter(dense.weight.detach()[kept].clone())
    if norm == "layernorm":
        sliced.normalized_shape = (len(kept),)
        sliced.bias = nn.Parameter(dense.bias.detach()[kept].clone())
        with pytest.raises(UnmatchableNormError, match="leave hidden_channel out"):
            match_norm(dense, sliced, kept, "ln")
        torch.testing.assert_close(sliced.weight, dense.weight[kept])  # left as it was
        return
    x = torch.zeros(5, width)
    x[:, kept] = torch.randn(5, len(kept))
    assert not torch.allclose(sliced(x[:, kept]), dense(x)[:, kept], rtol=1e-3)  # RMS over 7, not 16, channels
    assert match_norm(dense, sliced, kept) < 1e-4
    torch.testing.assert_close(sliced(x[:, kept]), dense(x)[:, kept], rtol=1e-4, atol=1e-6)
    if norm == "llama":  # what the solve finds is the scale sqrt(D / D')
        torch.testing.assert_close(sliced.weight, dense.weight[kept] * (width / len(kept)) ** 0.5, rtol=1e-4, atol=0)


def test_hidden_channel_gates_on_a_layernorm_model_are_refused_before_training():
    model = ARCHS["gpt2"].build()
    _, groups = analyze(model)
    with pytest.raises(UnmatchableNormError, match="LayerNorm"):
        check_matchable(model, [g for g in groups if g.kind == "hidden_channel"])


def test_per_layer_sparsity_is_each_layers_share_and_refuses_hidden_channels():
    model = ARCHS["llama_gqa"].build()
    _, groups = analyze(model)
    chosen = select_groups(groups, ["kv_group", "mlp_channel"])
    total = count_params(model)
    per_layer = Sparsity(chosen, total, 0.2, "per_layer")
    keep = random_plan(groups, "mlp_channel", seed=0)
    probs = {g.id: torch.tensor([1.0 if u in keep.get(g.id, range(g.n_units)) else 0.0 for u in range(g.n_units)])
             for g in chosen}
    by_layer = per_layer(probs)
    for i, layer in enumerate(sorted({g.layer for g in chosen})):
        mlp = next(g for g in chosen if g.layer == layer and g.kind == "mlp_channel")
        kv = next(g for g in chosen if g.layer == layer and g.kind == "kv_group")
        removed = (mlp.n_units - len(keep[mlp.id])) * mlp.unit_params
        assert float(by_layer[i]) == pytest.approx(removed / (mlp.params + kv.params), rel=1e-9)
    assert per_layer.target == pytest.approx(0.2 * total / sum(g.params for g in chosen))
    assert Sparsity(chosen, total, 0.2, "global").overall(probs) == pytest.approx(per_layer.overall(probs))
    hidden = select_groups(groups, ["mlp_channel", "hidden_channel"])
    with pytest.raises(Exception, match="leave hidden_channel out"):
        Sparsity(hidden, total, 0.2, "per_layer")


def test_the_options_refuse_what_learned_pruning_does_not_use():
    with pytest.raises(ValueError, match="train.select 'best' is not used"):
        CompressoConfig(data={"source": "a.txt"}, train={"select": "best"})
    with pytest.raises(ValueError, match="save_every"):
        CompressoConfig(data={"source": "a.txt"}, train={"save_every": 5})
    with pytest.raises(ValueError, match="scope"):
        CompressoConfig(data={"source": "a.txt"}, constraint={"scope": "per_head"})
    from learned.method import check_config

    with pytest.raises(ValueError, match="uses the run's --seed"):
        check_config(PruneConfig(ratio=0.2), CompressoConfig(data={"source": "a.txt"}, train={"seed": 3}))


# --- on the real model ------------------------------------------------------------------------------------

FAST = {"data": {"source": str(TINYSTORIES_TRAIN), "seq_len": 64, "validation": 64}, "train": {"batch_size": 4, "eval_every": 1000}}


@pytest.fixture(scope="module")
def stories():
    from zoo import require_shared

    require_shared()
    return load_model(STORIES), load_tokenizer(STORIES)


@pytest.mark.shared
def test_the_prompt_comes_first_and_carries_no_loss(stories):
    from learned import training_data

    _, tok = stories
    options = CompressoConfig(**FAST)
    ids = prompt_ids(tok, options.prompt.text)
    with_prompt, without = training_data(options, tok), training_data(CompressoConfig(**FAST, prompt={"enabled": False}), tok)
    assert len(with_prompt.train) == len(without.train)
    for a, b in zip(with_prompt.train[:50], without.train[:50]):
        assert a.input_ids[: 1 + len(ids)] == [tok.bos_token_id, *ids]
        assert a.labels[: 1 + len(ids)] == [IGNORE] * (1 + len(ids))
        assert a.input_ids[-len(b.input_ids) + 1 :] == b.input_ids[-len(b.input_ids) + 1 :]


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("ratio, kinds", [(0.2, ["attention", "mlp_channel"]), (0.3, ["attention", "mlp_channel", "hidden_channel"])])
def test_a_short_run_reaches_the_target_and_the_export_matches_it(stories, ratio, kinds):
    model, tok = stories
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = CompressoConfig(**{**FAST, "train": {**FAST["train"], "max_steps": 120}})
    config = PruneConfig(ratio=ratio, kinds=kinds, seed=0)
    result = compresso(model, config, options, tok, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input model is untouched
    report = result.report
    assert abs(report["expected_sparsity"] - ratio) < 0.02, report["expected_sparsity"]
    chosen = select_groups(result.groups, ["kv_group" if k == "attention" else k for k in kinds])
    one_unit_each = sum(g.unit_params for g in chosen)
    assert abs(result.params_after - report["params_target"]) <= one_unit_each
    assert result.params_after == count_params(result.model) == report["params_after"]
    assert report["params_target"] == count_params(model) - round(ratio * count_params(model))
    assert result.plan.params_removed == count_params(model) - result.params_after
    kept = report["kept_per_layer"]
    assert sum(u - k for u, k in zip(kept["mlp_channel"]["units"], kept["mlp_channel"]["kept"])) > 0
    if "hidden_channel" in kinds:
        assert report["norms_matched"] and max(report["norms_matched"].values()) < 1e-4
    ids = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(logits(result.model, ids)).all()


@pytest.mark.shared
def test_the_same_seed_learns_the_same_model(stories):
    model, tok = stories
    options = CompressoConfig(**{**FAST, "train": {**FAST["train"], "max_steps": 8}})
    a, b = (compresso(model, PruneConfig(ratio=0.2, seed=3), options, tok, progress=False) for _ in range(2))
    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert timeless(a.report["history"]) == timeless(b.report["history"])
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), n
    c = compresso(model, PruneConfig(ratio=0.2, seed=4), options, tok, progress=False)
    assert c.report["history"][-1]["loss"] != a.report["history"][-1]["loss"]


# --- the command line -------------------------------------------------------------------------------------


def _prune(tmp_path, *extra):
    ratio = [] if "--kind-ratio" in extra else ["--ratio", "0.2"]
    return ["prune", "--model", str(STORIES), *ratio, "--method", "compresso", "--out", str(tmp_path / "out"),
            "--quiet", *extra]


@pytest.mark.shared
@pytest.mark.slow
def test_depprune_prune_method_compresso_writes_a_model_that_opens_in_transformers(tmp_path, capsys):
    import yaml
    from transformers import AutoModelForCausalLM

    run = {"method_options": {"data": {"seq_len": 64, "validation": 64}, "train": {"batch_size": 4, "eval_every": 5}},
           "recover": {"data": {"source": str(TINYSTORIES_TRAIN), "seq_len": 64, "validation": 64},
                       "train": {"max_steps": 3, "batch_size": 4, "eval_every": 3}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    code = main(_prune(tmp_path, "--config", str(tmp_path / "run.yaml"), "--data", str(TINYSTORIES_TRAIN),
                       "--max-steps", "10", "--no-prompt", "--json"))
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["method"] == "compresso" and report["method_report"]["steps"] == 10
    assert report["method_report"]["prompt"] is False and report["recovery"]["steps"] == 3
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["depprune"]["run"]["config"]["method_options"]["train"]["max_steps"] == 10
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert count_params(plain) == report["params_after"]


@pytest.mark.shared
@pytest.mark.parametrize("extra, message", [
    ([], "needs method_options.data.source (--data)"),
    (["--data", "missing.txt"], "training data file 'missing.txt'"),
    (["--data", str(TINYSTORIES_TRAIN), "--importance", "l1"], "--importance: --method compresso learns its own scores"),
    (["--data", str(TINYSTORIES_TRAIN), "--rounds", "2"], "--rounds 2: --method compresso trains once"),
    (["--data", str(TINYSTORIES_TRAIN), "--kinds", "query_head"], "not query_head"),
    (["--data", str(TINYSTORIES_TRAIN), "--kind-ratio", "mlp_channel=0.3"], "give --ratio, not --kind-ratio"),
    (["--data", str(TINYSTORIES_TRAIN), "--strategy", "global"], "--strategy: --method compresso learns"),
])
def test_compresso_refuses_bad_runs_in_one_line_before_loading(tmp_path, capsys, extra, message):
    code = main(_prune(tmp_path, *extra))
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.shared
def test_a_method_flag_is_refused_with_another_method(tmp_path, capsys):
    code = main(["prune", "--model", str(STORIES), "--ratio", "0.2", "--data", str(TINYSTORIES_TRAIN),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--data is an option of --method compresso, not of 'one-shot'" in err, err


@pytest.mark.shared
def test_a_target_the_kinds_cannot_reach_is_refused_before_training(stories):
    from learned.method import CompressoUsageError

    model, tok = stories
    with pytest.raises(CompressoUsageError, match=r"kinds \['mlp_channel'\] can remove at most 63.5% of the parameters"):
        compresso(model, PruneConfig(ratio=0.9, kinds=["mlp_channel"]), CompressoConfig(**FAST), tok, progress=False)
