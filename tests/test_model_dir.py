"""Pruned models open anywhere: the files of the output directory, and plain transformers loading them.

Uniform sizes that the architecture's config can express are written into that config, so the
output needs no code from depprune.  Which zoo architectures can, under a uniform heads + MLP
plan, is listed by hand below: the others size heads from ``hidden_size // n_head`` with no
field of their own to override it, and get generated modeling code like per-layer sizes.
"""

from __future__ import annotations

import json

import pytest
import torch

from pruners.errors import PlanError
from pruners.io.checkpoint import save_pruned
from pruners.pipeline import PruneConfig, prune

from zoo import ARCHS, NEW_ARCHS, STORIES

ZOO = {name: a for name, a in {**ARCHS, **NEW_ARCHS}.items() if a.hf}
# the configs with a head_dim field of their own; Qwen2, Phi-3 and Phi derive it from the head count
# (vLLM's implementations too, so depprune does not add one to a plain config: they go per-layer)
PLAIN_CONFIG = {"llama_gqa", "llama_mha", "mistral", "mistral_eager", "gemma"}
IDS = torch.randint(3, 90, (2, 11), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def uniform():
    """Every zoo architecture pruned 30% (heads and MLP channels), the uniform strategy."""
    return {name: prune(a.build(), PruneConfig(ratio=0.3, importance="l2"), progress=False) for name, a in ZOO.items()}


@pytest.mark.parametrize("name", sorted(PLAIN_CONFIG))
def test_uniform_sizes_are_written_into_the_plain_config(uniform, name, tmp_path):
    from transformers import AutoModelForCausalLM

    result = uniform[name]
    out = save_pruned(result.model, tmp_path / name, result.record)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["depprune"]["hf_loadable"] is True and "auto_map" not in cfg
    assert "head_dim" not in result.record.config  # it is in the config already
    assert cfg["head_dim"] == ZOO[name].head_dim
    assert cfg["architectures"] == [type(result.model).__name__]  # engines (vLLM) choose their class by it
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.config.num_attention_heads < 6
    torch.testing.assert_close(logits(plain), logits(result.model), rtol=0, atol=1e-5)  # eager vs sdpa: not bitwise


@pytest.mark.shared
@pytest.mark.parametrize("kinds", [["mlp_channel"], ["attention", "mlp_channel"]])
def test_the_directory_holds_exactly_the_model_files(kinds, tmp_path):
    """stories260K (hidden 64, 8 heads in 4 KV groups): 3 of 4 KV groups leave 6 heads, which
    LlamaConfig refuses (hidden_size % num_attention_heads != 0), so its sizes go per layer."""
    from pruners.io.checkpoint import load_model

    result = prune(load_model(STORIES), PruneConfig(ratio=0.2, importance="l2", kinds=kinds), progress=False)
    out = save_pruned(result.model, tmp_path / "o", result.record, source=STORIES)
    code = ["modeling_depprune.py"] if len(kinds) == 2 else []
    assert sorted(p.name for p in out.iterdir()) == [
        ".depprune-output.json",  # OutputDir's marker: --force replaces only what depprune wrote
        "config.json", "generation_config.json", "model.safetensors", *code, "tokenizer.json", "tokenizer_config.json",
    ]


def test_large_weights_are_sharded_with_an_index(uniform, tmp_path):
    from transformers import AutoModelForCausalLM

    from pruners.io.checkpoint import load_model

    result = uniform["llama_gqa"]
    out = save_pruned(result.model, tmp_path / "s", result.record, max_shard_size=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == shards
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    sizes = {p.name: p.stat().st_size for p in out.glob("*.safetensors")}
    assert all(s < 20_000 + 4_000 for s in sizes.values())  # a shard's header is a few KB at most
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in result.model.parameters())
    assert torch.equal(logits(load_model(out)), logits(result.model))
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out).eval()), logits(result.model))


def test_a_computed_buffer_the_config_cannot_rebuild_is_refused_before_writing(uniform, tmp_path):
    """Non-persistent buffers are not saved; a pruned model whose buffer differs from the rebuilt one
    (here a rotary table altered by hand, as a plan slicing it would) must not be written at all."""
    import copy

    from pruners.errors import PlanError

    model = copy.deepcopy(uniform["llama_gqa"].model)
    model.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq[:-1].clone()
    with pytest.raises(PlanError, match=r"computed buffer 'model.rotary_emb.inv_freq' \[3\] is not what its config rebuilds \(\[4\]\)"):
        save_pruned(model, tmp_path / "b", uniform["llama_gqa"].record)
    assert not (tmp_path / "b").exists()


# -- round trip: prune -> save -> load in a fresh process where depprune is not importable --------

CHILD = r'''
import json, sys


class NoDepprune:  # depprune's packages are installed here: make sure the output does not need them
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"depgraph", "pruners", "recovery"}:
            raise ImportError(f"the pruned model imported {name}")


sys.meta_path.insert(0, NoDepprune())
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

report = {}
cases_file, report_file = sys.argv[1:]
for case in json.loads(open(cases_file).read()):
    name, out, remote = case["name"], case["out"], case["remote"]
    try:
        if remote:  # without trust_remote_code transformers must refuse, not build the unpruned model
            try:
                AutoModelForCausalLM.from_pretrained(out)
                report[name] = "opened without trust_remote_code"
                continue
            except ValueError as e:
                if "trust_remote_code" not in str(e):
                    raise
        model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote).eval()
        ref = load_file(case["ref"])
        with torch.no_grad():
            got = model(ref["ids"]).logits
        report[name] = float((got - ref["logits"]).abs().max())
    except Exception as e:
        report[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
open(report_file, "w").write(json.dumps(report))
'''

MODES = ("aligned", "per_layer", "uniform")


def mode_config(name: str, mode: str) -> PruneConfig:
    if mode == "per_layer":
        return PruneConfig(ratio=0.3, importance="l2", strategy="global", kinds=["attention", "mlp_channel", "hidden_channel"])
    if mode == "aligned":  # heads go only where the config can say how many
        return PruneConfig(ratio=0.2, importance="l2", align=8)
    return PruneConfig(ratio=0.3, importance="l2")
# per-layer sizes that transformers' per_layer_config schema expresses (the others: the record only)
ALIGN_REFUSED = {"bloom"}  # its MLP width is 4 * hidden_size, no config field of its own
PER_LAYER_SCHEMA = {"llama_gqa", "llama_mha", "mistral", "mistral_eager", "qwen2", "phi3", "gemma", "phi"}


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Every zoo architecture in every mode, saved, and opened by a child process without depprune."""
    import os
    import subprocess
    import sys

    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("round_trip")
    cases, saved = [], {}
    for name, arch in sorted(ZOO.items()):
        model = arch.build()
        for mode in MODES:
            key = f"{name}-{mode}"
            try:
                result = prune(model, mode_config(name, mode), progress=False)
            except PlanError as e:
                saved[key] = e
                continue
            out = save_pruned(result.model, root / key, result.record)
            ref = root / f"{key}.ref.safetensors"
            save_file({"ids": IDS, "logits": logits(result.model)}, str(ref))
            cfg = json.loads((out / "config.json").read_text())
            saved[key] = (out, cfg, result)
            cases.append({"name": key, "out": str(out), "ref": str(ref), "remote": "auto_map" in cfg})
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    (root / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", CHILD, "cases.json", "report.json"], capture_output=True, text=True,
                          cwd=root, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((root / "report.json").read_text()), saved


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_output_opens_in_plain_transformers_without_depprune(round_trip, name, mode):
    report, saved = round_trip
    if name in ALIGN_REFUSED and mode == "aligned":
        assert isinstance(saved[f"{name}-{mode}"], PlanError) and f"{name}-{mode}" not in report
        return
    err = report[f"{name}-{mode}"]
    assert isinstance(err, float) and err <= 1e-5, err
    out, cfg, result = saved[f"{name}-{mode}"]
    plain = mode == "aligned" or (mode == "uniform" and name in PLAIN_CONFIG)
    assert cfg["depprune"]["hf_loadable"] is plain
    files = {p.name for p in out.iterdir()} - {".depprune-output.json", "generation_config.json"}
    assert files == ({"config.json", "model.safetensors"} | (set() if plain else {"modeling_depprune.py"}))
    if not plain:
        assert cfg["model_type"] == "depprune_" + result.model.config.model_type
        assert cfg["architectures"] == ["Depprune" + type(result.model).__name__]
        assert ("per_layer_config" in cfg) == (name in PER_LAYER_SCHEMA)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_depprune_loads_the_same_model_transformers_does(round_trip, name, mode):
    """load_model never runs the generated code: it builds the source architecture and applies the record."""
    from pruners.io.checkpoint import load_model

    _, saved = round_trip
    if isinstance(saved[f"{name}-{mode}"], PlanError):
        return
    out, _, result = saved[f"{name}-{mode}"]
    torch.testing.assert_close(logits(load_model(out)), logits(result.model), rtol=0, atol=1e-6)  # eager vs sdpa


@pytest.mark.parametrize("name", ["llama_gqa", "gpt2", "falcon"])
def test_peft_lora_sizes_each_adapter_from_its_own_layer(round_trip, name):
    """A per-layer output opened by transformers takes LoRA on every linear layer, each adapter
    shaped like its layer; at initialisation (B = 0) the adapted model computes the same logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _, saved = round_trip
    out, _, result = saved[f"{name}-per_layer"]
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    before = logits(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)).eval()
    lora = [m for m in peft_model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert lora and all(
        m.lora_A["default"].in_features == m.base_layer.weight.shape[-1]
        or m.lora_A["default"].in_features == m.base_layer.weight.shape[0]  # Conv1D stores (in, out)
        for m in lora
    )
    assert len({m.lora_A["default"].in_features for m in lora} | {m.lora_B["default"].out_features for m in lora}) > 2
    torch.testing.assert_close(logits(peft_model), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PER_LAYER_SCHEMA))
def test_per_layer_config_describes_each_layer(round_trip, name):
    """transformers resolves ``config.per_layer_config[i]``; each resolved layer config builds the pruned layer."""
    from transformers import AutoConfig

    from pruners.slicing.layer_config import build_layer, decoder_layers

    _, saved = round_trip
    out, cfg, result = saved[f"{name}-per_layer"]
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert config.is_heterogeneous
    _, layers = decoder_layers(result.model)
    for i, layer in enumerate(layers):
        built = build_layer(type(layer), config.per_layer_config[i], i)
        assert {n: p.shape for n, p in built.named_parameters()} == {n: p.shape for n, p in layer.named_parameters()}


# -- aligned mode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2", "phi3", "gpt2", "opt"])
def test_aligned_mode_keeps_layers_alike_and_needs_no_remote_code(name, tmp_path):
    """Heads go only where the config has a head_dim of its own (Llama); elsewhere the MLP takes the ratio."""
    from transformers import AutoModelForCausalLM

    result = prune(ZOO[name].build(), PruneConfig(ratio=0.2, importance="l2", align=8), progress=False)
    widths = {len(units) for gid, units in result.record.kept.items() if gid.startswith("mlp_channel@")}
    assert len(widths) == 1 and widths.pop() % 8 == 0, result.record.kept.keys()
    heads_pruned = any(gid.startswith(("kv_group@", "attention_head@")) for gid in result.record.kept)
    assert heads_pruned == (name == "llama_gqa")
    out = save_pruned(result.model, tmp_path / name, result.record)
    assert not (out / "modeling_depprune.py").exists()
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(plain), logits(result.model), rtol=0, atol=1e-5)


def test_aligned_mode_refuses_what_the_config_cannot_express():
    """BLOOM's MLP width is 4 * hidden_size, no field of its own; its heads set the head size."""
    from pruners.errors import PlanError

    with pytest.raises(PlanError, match=r"--align 8: no change of the bloom config's size fields rebuilds the pruned model"):
        prune(ZOO["bloom"].build(), PruneConfig(ratio=0.2, importance="l2", align=8), progress=False)


@pytest.mark.shared
@pytest.mark.parametrize("ratio, heads", [(0.2, 8), (0.5, 4)])
def test_aligned_mode_keeps_only_head_counts_the_config_accepts(ratio, heads):
    """stories260K: hidden 64, 8 heads in 4 KV groups; LlamaConfig accepts 2, 4 or 8 heads, not 6
    (a uniform 20% would keep 3 KV groups): aligned, the heads stay at 8, or go to 4 at 50%."""
    from pruners.alignment import accepted_head_counts
    from pruners.io.checkpoint import load_model

    model = load_model(STORIES)
    assert accepted_head_counts(model.config) == [2, 4, 8]
    result = prune(model, PruneConfig(ratio=ratio, importance="l2", align=8), progress=False)
    assert result.record.config.get("num_attention_heads", 8) == heads
    assert result.record.config["intermediate_size"] % 8 == 0
    assert abs(result.plan.params_removed / result.params_before - ratio) < 0.05


def test_computed_buffers_are_compared_for_a_model_of_any_size():
    """A 500M-parameter Llama (parameters on meta, buffers real): its rotary tables are rebuilt from
    its config, and not from one with another head size -- decided without building the weights
    (which once made every model over 300M parameters need remote code under --align)."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    from pruners.slicing.hf_config import buffers_match, with_changes

    config = LlamaConfig(hidden_size=8192, intermediate_size=8192, num_hidden_layers=1, num_attention_heads=64,
                         num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False)
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) > 500e6
    assert buffers_match(model, config)
    assert not buffers_match(model, with_changes(config, {"head_dim": 64}))


@pytest.mark.parametrize("bad, message", [
    ({"strategy": "global"}, "align keeps every layer alike, which needs strategy 'uniform', not 'global'"),
    ({"round_to": 4}, "align rounds the channels to multiples of 8 itself; leave round_to at 1"),
])
def test_aligned_mode_refuses_settings_that_contradict_it(bad, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        PruneConfig(ratio=0.2, align=8, **bad)
