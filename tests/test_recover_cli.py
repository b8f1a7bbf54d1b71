"""``depprune recover`` and ``depprune prune --recover`` end to end: outputs, records, refusals, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import pruners
from pruners import load_pruned, load_tokenizer
from pruners.cli import main
from recovery import RecoverConfig, recover

from zoo import STORIES, TINYSTORIES_TRAIN, TINYSTORIES_VALID, tiny_llama

pytestmark = pytest.mark.shared
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(f in err for f in fragments), err


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny dense Llama with stories260K's tokenizer, pruned by ``depprune prune``, and a small text file."""
    root = tmp_path_factory.mktemp("recover")
    dense = root / "dense"
    tiny_llama(vocab_size=512, hidden_size=32, intermediate_size=128, max_position_embeddings=256,
               initializer_range=0.3).save_pretrained(dense)
    for f in TOKENIZER_FILES:
        shutil.copyfile(STORIES / f, dense / f)
    text = root / "stories.txt"
    text.write_text("\n\n".join(TINYSTORIES_TRAIN.read_text(encoding="utf-8").split("\n\n")[:80]), encoding="utf-8")
    pruned = root / "pruned"
    assert main(["prune", "--model", str(dense), "--ratio", "0.15", "--out", str(pruned), "--quiet"]) == 0
    return {"root": root, "dense": dense, "pruned": pruned, "text": text}


FAST = ("--max-steps", "8", "--seq-len", "32", "--batch-size", "4", "--validation", "8", "--eval-every", "4",
        "--lr", "0.01", "--quiet")


def test_recover_writes_a_model_that_loads_back_with_the_recipes_logits(dirs, capsys, tmp_path):
    out = tmp_path / "rec"
    code, text, err = run_cli(capsys, "recover", "--model", dirs["pruned"], "--data", dirs["text"], "--out", out,
                              "--keep-adapter", *FAST)
    assert code == 0, err
    assert "validation loss" in text
    model, record = load_pruned(out)
    # the same recipe in-process, same options and seed: the same weights, bit for bit
    base, _ = load_pruned(dirs["pruned"])
    cfg = RecoverConfig.model_validate({
        "data": {"source": str(dirs["text"]), "seq_len": 32, "validation": 8}, "keep_adapter": True,
        "train": {"max_steps": 8, "batch_size": 4, "eval_every": 4, "lr": 0.01},
    })
    want = recover(base, load_tokenizer(dirs["pruned"]), cfg, progress=False).model
    ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want(ids).logits)
        assert not torch.equal(model(ids).logits, base(ids).logits)
    # the run record: the pruning run, then this recovery with its config and validation curve
    cfg_json = json.loads((out / "config.json").read_text())
    run = cfg_json["depprune"]["run"]
    assert run["config"]["model"] == str(dirs["dense"])
    (rec,) = run["recovery"]
    assert rec["config"]["method"] == "lora" and rec["config"]["train"]["max_steps"] == 8
    assert [v["step"] for v in rec["validation"]] == [0, 4, 8]
    log = json.loads((out / "recovery_log.json").read_text())
    assert [h["step"] for h in log["history"]] == list(range(1, 9))
    assert (out / "recovery_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the adapter opens in peft on the pruned base and equals the merged model
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(load_pruned(dirs["pruned"])[0], str(out / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-4)  # float32 rounding
    assert not list(tmp_path.glob(".rec.depprune-*"))  # no checkpoints, lock or temporaries left


def test_kd_distils_from_the_source_recorded_in_the_pruned_model(dirs, capsys, tmp_path):
    out = tmp_path / "kd"
    code, text, err = run_cli(capsys, "recover", "--model", dirs["pruned"], "--data", dirs["text"], "--out", out,
                              "--method", "kd", "--json", *FAST)
    assert code == 0, err
    report = json.loads(text)
    assert report["teacher"] == str(dirs["dense"]) and report["method"] == "kd"
    assert report["validation_loss"] < report["validation_loss_start"]


def test_alpaca_data_and_eval_text(dirs, capsys, tmp_path):
    data = tmp_path / "a.json"
    records = [{"instruction": f"Tell a story about {w}.", "input": "", "output": f"Once there was a {w}. It was happy."}
               for w in ("cat", "dog", "bird", "fish", "frog", "bee", "cow", "pig", "owl", "fox")]
    data.write_text(json.dumps(records))
    code, text, err = run_cli(capsys, "recover", "--model", dirs["pruned"], "--data", data, "--out", tmp_path / "o",
                              "--eval-text", TINYSTORIES_VALID, "--json", "--max-steps", "4", "--seq-len", "200",
                              "--batch-size", "2", "--validation", "2", "--quiet")
    assert code == 0, err
    report = json.loads(text)
    assert report["data"]["kind"] == "alpaca" and report["data"]["train_sequences"] == 8
    assert report["ppl_before"] > 1 and report["ppl_after"] > 1


# -- refusals: exit 2, one line, nothing written, before any weight is read -------------------------


@pytest.fixture
def no_weights_loaded(monkeypatch):
    def refuse(path, *args, **kwargs):
        raise AssertionError(f"weights of {path} were loaded before the bad input was refused")

    monkeypatch.setattr(pruners, "load_pruned", refuse)


def bad_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize("make,fragments", [
    (lambda d, t: ["--data", t / "missing.txt"], ["missing.txt", "does not exist"]),
    (lambda d, t: ["--data", bad_file(t, "empty.txt", "")], ["empty.txt", "empty"]),
    (lambda d, t: ["--data", bad_file(t, "b.json", '[{"prompt": 1}]')], ["b.json", "'instruction' is missing"]),
    (lambda d, t: ["--data", bad_file(t, "b.jsonl", "{oops")], ["b.jsonl", "does not parse"]),
    (lambda d, t: ["--data", bad_file(t, "tiny.txt", "Tom ran.")], ["tiny.txt", "fewer tokens than one window"]),
    (lambda d, t: ["--data", d["text"], "--method", "full", "--keep-adapter"], ["keep_adapter"]),
    (lambda d, t: ["--data", d["text"], "--method", "sgd"], ["--method 'sgd'"]),
    (lambda d, t: ["--data", d["text"], "--max-steps", "0"], ["--max-steps 0"]),
    (lambda d, t: ["--data", d["text"], "--validation", "2.5"], ["--validation 2.5"]),
    (lambda d, t: ["--data", d["text"], "--resume"], ["--resume", "no checkpoint"]),
    (lambda d, t: ["--data", d["text"], "--seq-len", "300"], ["--seq-len 300", "max_position_embeddings 256"]),
    (lambda d, t: ["--data", d["text"], "--method", "kd", "--teacher", STORIES_WRONG_VOCAB(t)], ["vocabulary"]),
    (lambda d, t: ["--data", d["text"], "--config", bad_file(t, "r.yaml", "train: {lr: 1, momentum: 0.9}")],
     ["unknown option 'train.momentum'", "valid:"]),
])
def test_bad_input_is_refused_before_any_weight_is_read(dirs, capsys, tmp_path, no_weights_loaded, make, fragments):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "recover", "--model", dirs["pruned"], "--out", out, *make(dirs, tmp_path), "--quiet")
    assert_refused(code, err, *fragments)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def STORIES_WRONG_VOCAB(tmp_path):  # noqa: N802  (reads as the value it makes)
    path = tmp_path / "teacher"
    tiny_llama(vocab_size=600).save_pretrained(path)
    return path


def test_a_non_empty_out_is_refused_without_force_and_kept(dirs, capsys, tmp_path, no_weights_loaded):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "recover", "--model", dirs["pruned"], "--data", dirs["text"], "--out", out, "--quiet")
    assert_refused(code, err, "not empty", "--force")
    assert (out / "notes.txt").read_text() == "mine"


def test_a_plain_model_without_a_depprune_record_is_refused(dirs, capsys, tmp_path):
    code, _, err = run_cli(capsys, "recover", "--model", dirs["dense"], "--data", dirs["text"], "--out",
                           tmp_path / "o", *FAST)
    assert_refused(code, err, "not written by depprune")
    assert not (tmp_path / "o").exists()


# -- an interrupted run: killed, refused without --resume, resumed to the uninterrupted weights ------


@pytest.mark.slow
def test_resume_after_kill_gives_the_uninterrupted_weights(dirs, tmp_path):
    args = ["--model", str(dirs["pruned"]), "--data", str(dirs["text"]), "--max-steps", "60", "--seq-len", "32",
            "--batch-size", "4", "--validation", "8", "--eval-every", "10", "--quiet"]
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "pruners.cli", "recover", *args, "--out", str(whole)], check=True)
    out = tmp_path / "killed"
    ck = tmp_path / ".killed.depprune-checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "pruners.cli", "recover", *args, "--out", str(out), "--save-every", "5"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(ck.glob("step-*")) and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = sorted(ck.glob("step-*"))
    assert steps and not out.exists(), "the run was not killed mid-way (no checkpoint, or it had finished)"
    assert int(steps[-1].name.split("-")[1]) < 60
    again = subprocess.run([sys.executable, "-m", "pruners.cli", "recover", *args, "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr and not out.exists()
    subprocess.run([sys.executable, "-m", "pruners.cli", "recover", *args, "--out", str(out), "--save-every", "5",
                    "--resume"], check=True)
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not ck.exists()


# -- depprune prune --recover: both in one run ---------------------------------------------------------


@pytest.mark.slow
def test_prune_recover_chains_both_and_recovers_perplexity(capsys, tmp_path, record_result):
    run = tmp_path / "run.yaml"
    run.write_text("recover:\n  method: lora\n  data: {seq_len: 128, validation: 16}\n"
                   "  train: {max_steps: 40, batch_size: 8, eval_every: 20, lr: 0.003}\n")
    out = tmp_path / "pr"
    code, text, err = run_cli(capsys, "prune", "--model", STORIES, "--ratio", "0.2", "--importance", "l2",
                              "--config", run, "--recover", TINYSTORIES_TRAIN, "--eval-text", TINYSTORIES_VALID,
                              "--out", out, "--json", "--quiet")
    assert code == 0, err
    report = json.loads(text)
    assert report["recovery"]["steps"] == 40 and report["recovery"]["method"] == "lora"
    assert report["ppl_recovered"] < 0.8 * report["ppl_after"], report
    record_result(f"prune --recover stories260K 20% l2 + 40 LoRA steps: PPL {report['ppl_before']:.2f} -> "
                  f"{report['ppl_after']:.2f} pruned -> {report['ppl_recovered']:.2f} recovered")
    saved = json.loads((out / "config.json").read_text())["depprune"]["run"]
    assert saved["recovery"][0]["config"]["train"]["max_steps"] == 40
    assert (out / "recovery_loss.png").is_file() and (out / "recovery_log.json").is_file()
    model, _ = load_pruned(out)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]


def custom_code_copy(model, dest):
    """``model`` re-expressed as a model with its own code (``auto_map``): it loads only with trust_remote_code."""
    shutil.copytree(model, dest)
    (dest / "configuration_custom.py").write_text(
        "from transformers import LlamaConfig\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n")
    (dest / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_custom import CustomConfig\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(model_type="custom-llama", architectures=["CustomForCausalLM"],
               auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                         "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_prune_recover_passes_trust_remote_code_to_the_recovery_checks(dirs, capsys, tmp_path):
    """A model with its own code, chained with --recover: the recovery's checks load it as pruning does."""
    model = custom_code_copy(dirs["dense"], tmp_path / "custom")
    run = tmp_path / "run.yaml"
    run.write_text("recover:\n  data: {seq_len: 32, validation: 8}\n  train: {max_steps: 2, batch_size: 4, eval_every: 2}\n")
    argv = ("prune", "--model", model, "--ratio", "0.15", "--recover", dirs["text"], "--config", run, "--quiet")
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "refused")
    assert_refused(code, err, "--trust-remote-code")
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "out", "--trust-remote-code")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "config.json").read_text())["depprune"]["run"]
    assert [r["config"]["method"] for r in record["recovery"]] == ["lora"]
