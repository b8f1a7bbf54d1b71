"""What the command line refuses, end to end: exit code 2, at most 3 lines on stderr, no traceback,
nothing written and every other directory untouched; bugs say "internal error"; signals and closed
pipes end quietly.  Library-level checks of the same rules live in test_output_dir.py,
test_input_files.py and test_model_loading.py; these tests check that the CLI wires them in and
refuses *before* the long work (a model load that should not happen fails the test)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import pruners.io.checkpoint
from pruners.cli import main

from zoo import SHARED, STORIES, tiny_gpt2

ROOT = Path(__file__).resolve().parents[1]
VALID = SHARED / "data" / "tinystories-valid" / "TinyStories-valid.first46.txt"
PIQA = SHARED / "data" / "piqa"

pytestmark = pytest.mark.shared


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(code, err, message, *, lines=1):
    assert code == 2, err
    assert "Traceback" not in err, err
    got = err.strip().splitlines()
    assert 1 <= len(got) <= lines and message in got[-1], err


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """Fail if the CLI loads model weights: the refusal must come before that."""
    real = pruners.io.checkpoint.load_model

    def load_model(path, *args, weights=True, **kwargs):
        if weights:
            raise AssertionError(f"weights of {path} were loaded before the bad input was refused")
        return real(path, *args, weights=False, **kwargs)

    monkeypatch.setattr(pruners.io.checkpoint, "load_model", load_model)


@pytest.fixture
def model_copy(tmp_path):
    src = tmp_path / "runs" / "m"
    shutil.copytree(STORIES, src, ignore=shutil.ignore_patterns("llama2c_original"))
    return src


def prune_argv(model, out, *extra):
    return ["prune", "--model", model, "--ratio", "0.2", "--out", out, "--quiet", *extra]


# -- data loss: --out never deletes or writes into anything it should not -----------------------

def test_out_containing_the_source_is_refused_and_the_source_survives(model_copy, capsys):
    before = snapshot(model_copy.parent)
    code, _, err = run_cli(capsys, *prune_argv(model_copy, model_copy.parent, "--force"))
    assert_refused(code, err, "runs")
    assert snapshot(model_copy.parent) == before


def test_out_inside_the_source_is_refused(model_copy, capsys):
    before = snapshot(model_copy)
    code, _, err = run_cli(capsys, *prune_argv(model_copy, model_copy / "pruned"))
    assert_refused(code, err, "pruned")
    assert snapshot(model_copy) == before


def test_empty_out_with_force_never_touches_the_working_directory(model_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, *prune_argv(model_copy, "", "--force"))
    assert_refused(code, err, "output path '' is empty")
    code, _, err = run_cli(capsys, *prune_argv(model_copy, ".", "--force"))
    assert_refused(code, err, "working directory")
    assert snapshot(tmp_path) == before


def test_force_replaces_only_what_depprune_wrote(model_copy, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    code, _, err = run_cli(capsys, *prune_argv(model_copy, user, "--force"))
    assert_refused(code, err, "mine")
    assert (user / "thesis.tex").read_text() == "precious"


def test_out_symlink_is_refused(model_copy, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    code, _, err = run_cli(capsys, *prune_argv(model_copy, link))
    assert_refused(code, err, "symbolic link")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_unwritable_out_parent_is_refused_before_pruning(tmp_path, capsys, no_weights_loaded):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, *prune_argv(STORIES, tmp_path / "file" / "out"))
    assert_refused(code, err, "file")


def test_argument_that_is_not_utf8_is_refused(tmp_path, capsys):
    out = os.fsdecode(bytes(tmp_path) + b"/out\xff")  # how Python hands over undecodable argv bytes
    code, _, err = run_cli(capsys, *prune_argv(STORIES, out))
    assert_refused(code, err, "is not valid UTF-8")
    assert list(tmp_path.iterdir()) == []


# -- everything checked before the work starts -------------------------------------------------

def _write(tmp_path, name, data: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return p


@pytest.mark.parametrize(
    "make,flags,message",
    [
        (lambda t: _write(t, "empty.txt", ""), ["--eval-text"], "empty.txt"),
        (lambda t: _write(t, "bin.txt", b"\x00\x01\x02binary"), ["--eval-text"], "bin.txt"),
        (lambda t: _write(t, "empty.txt", "  \n"), ["--importance", "taylor-element", "--calibration"], "empty.txt"),
        (lambda t: _write(t, "latin1.txt", "caf\xe9".encode("latin-1")), ["--importance", "wanda-sp", "--calibration"],
         "latin1.txt"),
        (lambda t: _write(t, "calib.json", '[{"text": "not alpaca"}]'), ["--importance", "wanda-sp", "--calibration"],
         "calib.json"),
        (lambda t: _write(t, "calib.jsonl", '{"instruction": "a", "output": "b"}\n{oops\n'),
         ["--importance", "wanda-sp", "--calibration"], "line 2"),
        (lambda t: VALID, ["--importance", "wanda-sp", "--calibration-samples", "100000", "--calibration"], "at most"),
        (lambda t: VALID, ["--importance", "wanda-sp", "--calibration-seq-len", "100000", "--calibration"],
         "max_position_embeddings 512"),
    ],
    ids=["empty eval text", "binary eval text", "blank calibration", "latin-1 calibration", "not alpaca json",
         "bad jsonl line", "too many samples", "seq len beyond context"],
)
def test_bad_input_files_are_refused_before_the_weights_load(make, flags, message, tmp_path, capsys, no_weights_loaded):
    path = make(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *prune_argv(STORIES, out, *flags, path))
    assert_refused(code, err, message)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--layers", "0.5", "1.5"], "a fractional layer bound must be in [0, 1], got 1.5"),
        (["--layers", "-100", "-2"], "layer bound -100 is out of range for a model with 5 layers"),
        (["--layers", "2", "9"], "layer bound 9 is out of range"),
        (["--seed", "-1"], "--seed -1"),
        (["--seed", str(2**32)], "--seed 4294967296"),
        (["--calibration-samples", "0"], "--calibration-samples 0"),
        (["--calibration-activation-memory", "-0.5"], "--calibration-activation-memory '-0.5': activation_memory '-0.5' "
         "must be 'auto' or a multiple of the weight bytes >= 0"),
        (["--calibration-activation-memory", "lots"], "--calibration-activation-memory 'lots'"),
    ],
)
def test_limits_are_refused_before_the_weights_load(flags, message, tmp_path, capsys, no_weights_loaded):
    code, _, err = run_cli(capsys, *prune_argv(STORIES, tmp_path / "out", *flags))
    assert_refused(code, err, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--ppl", str(VALID), "--limit", "0"], "limit"),
        (["--piqa", str(PIQA / "valid.jsonl"), "--limit", "-1"], "limit"),
        (["--ppl", str(VALID), "--max-tokens", "-5"], "max_tokens -5"),
        (["--ppl", "EMPTY"], "empty.txt"),
        (["--lm-eval-tasks", " , "], "names no task"),
    ],
)
def test_eval_refuses_bad_numbers_and_files_before_loading(flags, message, tmp_path, capsys, no_weights_loaded):
    flags = [str(_write(tmp_path, "empty.txt", "")) if f == "EMPTY" else f for f in flags]
    code, _, err = run_cli(capsys, "eval", "--model", STORIES, *flags, "--quiet")
    assert_refused(code, err, message)


def test_eval_refuses_a_piqa_label_outside_the_choices(tmp_path, capsys, no_weights_loaded):
    (tmp_path / "q.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n{"goal": "h", "sol1": "c", "sol2": "d"}\n')
    (tmp_path / "q-labels.lst").write_text("0\n2\n")
    code, _, err = run_cli(capsys, "eval", "--model", STORIES, "--piqa", tmp_path / "q.jsonl", "--quiet")
    assert_refused(code, err, "line 2")


# -- never save garbage ---------------------------------------------------------------------

def test_nan_weights_are_refused_and_allowed_only_explicitly(model_copy, tmp_path, capsys):
    state = load_file(model_copy / "model.safetensors")
    state["model.layers.2.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(state, model_copy / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *prune_argv(model_copy, out, "--eval-text", VALID))
    assert_refused(code, err, "model.layers.2.mlp.down_proj.weight")
    assert not out.exists()
    code, stdout, err = run_cli(capsys, *prune_argv(model_copy, out, "--eval-text", VALID, "--allow-nonfinite", "--json"))
    assert code == 0, err

    def reject(constant):  # NaN / Infinity are not JSON
        raise AssertionError(f"non-standard JSON constant {constant}")

    report = json.loads(stdout, parse_constant=reject)
    assert report["ppl_before"] == report["ppl_after"] == "nan"  # said, in standard JSON
    saved = json.loads((out / "config.json").read_text(), parse_constant=reject)
    assert saved["depprune"]["run"]["report"] == report


def test_nan_scores_are_refused(tmp_path, capsys, monkeypatch):
    import numpy as np

    import pruners.pipeline

    real = pruners.pipeline.score_groups

    def nan_scores(*args, **kwargs):
        scores = real(*args, **kwargs)
        gid = sorted(scores)[0]
        scores[gid] = np.full_like(scores[gid], np.nan)
        return scores

    monkeypatch.setattr(pruners.pipeline, "score_groups", nan_scores)
    code, _, err = run_cli(capsys, *prune_argv(STORIES, tmp_path / "out"))
    assert_refused(code, err, "non-finite scores")
    assert list(tmp_path.iterdir()) == []


# -- one place turns errors into messages ----------------------------------------------------

def test_an_internal_error_says_so_and_hides_the_traceback_unless_debug(tmp_path, capsys, monkeypatch):
    import pruners.pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("tracer exploded\nsecond line")

    monkeypatch.setattr(pruners.pipeline, "analyze", boom)
    code, _, err = run_cli(capsys, "inspect", "--model", STORIES)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "internal error, please report it (RuntimeError: tracer exploded (more with --debug))" in err
    code, _, err = run_cli(capsys, "inspect", "--model", STORIES, "--debug")
    assert code == 1 and "Traceback" in err and "second line" in err


def cli_process(*argv, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.Popen([sys.executable, "-m", "pruners.cli", *map(str, argv)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_closed_stdout_pipe_ends_quietly():
    proc = cli_process("inspect", "--model", STORIES, stdout=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is printed, like `| head -1` at its end
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == "", err


def test_remote_code_is_never_run_even_when_stdin_says_yes(tmp_path):
    model = tmp_path / "custom"
    shutil.copytree(STORIES, model, ignore=shutil.ignore_patterns("llama2c_original"))
    sentinel = tmp_path / "executed"
    (model / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
    )
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (model / "config.json").write_text(json.dumps(cfg))
    proc = cli_process("inspect", "--model", model, "--json", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, err = proc.communicate("y\ny\n", timeout=120)
    assert proc.returncode == 2 and out == "" and "--trust-remote-code" in err, err
    assert len(err.strip().splitlines()) == 1 and not sentinel.exists()


def test_sigterm_mid_run_and_a_second_writer(model_copy, tmp_path, capsys):
    """A run holding OUT makes a second run exit 2 at once; SIGTERM ends the first with nothing written."""
    out = tmp_path / "out"
    first = cli_process(*prune_argv(model_copy, out, "--importance", "taylor-element", "--calibration", VALID,
                                    "--calibration-samples", "100", "--calibration-seq-len", "128"))
    lock = tmp_path / ".out.depprune-lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.exists(), first.stderr.read() if first.poll() is not None else "no lock file"
    code, _, err = run_cli(capsys, *prune_argv(model_copy, out))
    assert_refused(code, err, "another depprune run is writing")
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [model_copy.parent]  # no OUT, no temporary, no lock file


# -- found by an adversarial sweep of 400+ bad inputs --------------------------------------------

@pytest.mark.parametrize(
    "run,message",
    [
        ({"model": 5}, "--model must be a path (a string), got int 5"),
        ({"model": ["a"]}, "--model must be a path (a string), got list"),
        ({"out": "o\x00x"}, "holds a NUL character"),
        ({"calibration": "text.txt"}, "calibration 'text.txt' must be a mapping"),
        ({"aggregation": ["sum"]}, "unknown --aggregation ['sum']"),
        ({"importance": {"name": "l2"}}, "unknown --importance {'name': 'l2'}"),
        ({"calibration": [1], "FLAG": ["--calibration-samples", "3"]}, "calibration [1] in --config must be a mapping"),
        ({"min_units": True}, "--min-units True: Input should be a valid integer"),  # not silently 1
        ({"calibration": {"samples": 2.5}}, "--calibration-samples 2.5: Input should be a valid integer"),
    ],
)
def test_run_file_values_of_the_wrong_type(run, message, tmp_path, capsys, no_weights_loaded):
    flags = run.pop("FLAG", [])
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": str(STORIES), "out": str(tmp_path / "o"), "ratio": 0.2, **run}))
    code, _, err = run_cli(capsys, "prune", "--config", path, "--quiet", *flags)
    assert_refused(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize("flag", ["--model", "--out", "--eval-text"])
def test_paths_too_long_for_the_file_system(flag, tmp_path, capsys):
    argv = {"--model": STORIES, "--out": tmp_path / "o", "--eval-text": VALID}
    argv[flag] = tmp_path / ("x" * 300)
    code, _, err = run_cli(capsys, "prune", "--ratio", "0.2", "--quiet", *[x for kv in argv.items() for x in kv])
    assert_refused(code, err, "is too long (")


@pytest.mark.parametrize("device", ["/dev/zero", "FIFO"])
def test_calibration_from_a_device_or_pipe_never_hangs(device, tmp_path, capsys, no_weights_loaded):
    if device == "FIFO":
        device = tmp_path / "fifo"
        os.mkfifo(device)
    code, _, err = run_cli(capsys, *prune_argv(STORIES, tmp_path / "o", "--importance", "wanda-sp", "--calibration", device))
    assert_refused(code, err, "is not a regular file")


def test_eval_of_a_config_only_directory(tmp_path, capsys):
    shutil.copy(STORIES / "config.json", tmp_path / "config.json")
    code, _, err = run_cli(capsys, "eval", "--model", tmp_path, "--ppl", VALID, "--quiet")
    assert_refused(code, err, "has a config but no weights to evaluate")


def test_a_tokenizer_of_another_model_is_refused(tmp_path, capsys, no_weights_loaded):
    tok = json.loads((STORIES / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab.update({f"extra{i}": 512 + i for i in range(100)})  # ids the 512-row embedding does not have
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(tok))
    shutil.copy(STORIES / "tokenizer_config.json", tmp_path / "tok")
    code, _, err = run_cli(capsys, *prune_argv(STORIES, tmp_path / "o", "--tokenizer", tmp_path / "tok", "--eval-text", VALID))
    assert_refused(code, err, "has 612 tokens but the model's vocabulary has 512")


@pytest.mark.parametrize("dtype", ["int8", "int32", "bool"])
def test_integer_weights_are_refused_not_cast(dtype, model_copy, tmp_path, capsys):
    import torch

    state = load_file(model_copy / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    state[name] = state[name].to(getattr(torch, dtype))
    save_file(state, model_copy / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run_cli(capsys, *prune_argv(model_copy, tmp_path / "o"))
    assert_refused(code, err, f"parameter {name} is stored as")


def test_tied_config_with_two_different_embeddings_is_refused(model_copy, tmp_path, capsys):
    state = load_file(model_copy / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"] * 2  # tie_word_embeddings stays true
    save_file(state, model_copy / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run_cli(capsys, *prune_argv(model_copy, tmp_path / "o"))
    assert_refused(code, err, "sets tie_word_embeddings but the weights store different input and output embeddings")


def test_round_to_larger_than_every_group_is_refused(tmp_path, capsys, no_weights_loaded):
    code, _, err = run_cli(capsys, *prune_argv(STORIES, tmp_path / "o", "--round-to", "100000"))
    assert_refused(code, err, "--round-to 100000 is larger than every planned group (the largest has 172 units)")


def test_align_with_the_global_strategy_is_refused(tmp_path, capsys, no_weights_loaded):
    code, _, err = run_cli(capsys, *prune_argv(STORIES, tmp_path / "o", "--align", "8", "--strategy", "global"))
    assert_refused(code, err, "align keeps every layer alike, which needs strategy 'uniform', not 'global'")


def test_absurd_layer_count_is_refused_not_built(tmp_path, capsys):
    cfg = json.loads((STORIES / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 10**6}))
    code, _, err = run_cli(capsys, "inspect", "--model", tmp_path)
    assert_refused(code, err, "num_hidden_layers is 1000000; expected at most 10000")


def test_zero_shot_items_longer_than_the_context_keep_its_end():
    """An item longer than max_position_embeddings is scored on its last 512 tokens (lm-eval's rule)."""
    import torch

    from pruners.eval.multiple_choice import continuation_logprob
    from pruners.io.checkpoint import load_model, load_tokenizer

    model, tok = load_model(STORIES), load_tokenizer(STORIES)
    context, continuation = "Once upon a time " * 400, " there was a cat."  # ~1,600 tokens, context 512
    full = [tok.bos_token_id] + tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_cont = len(full) - 1 - len(tok(context, add_special_tokens=False)["input_ids"])
    window = full[-512:]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([window])).logits[0, :-1], dim=-1)  # (511, vocab)
    expected = sum(float(logp[i - 1, window[i]]) for i in range(512 - n_cont, 512))
    assert continuation_logprob(model, tok, context, continuation) == pytest.approx(expected, abs=1e-4)


def test_speed_of_a_model_with_a_short_context_fits_it():
    from pruners.eval import generation_speed

    model = tiny_gpt2(n_positions=8, n_embd=16, n_layer=1, n_head=2)
    report = generation_speed(model, repeats=1)
    assert (report["prompt_len"], report["gen_len"]) == (4, 4) and report["tokens_per_s"] > 0


# -- second sweep -------------------------------------------------------------------------------

def test_an_interrupt_after_the_swap_says_the_output_was_replaced(tmp_path, capsys, monkeypatch):
    import pruners.io.output_dir

    out = tmp_path / "out"
    assert run_cli(capsys, *prune_argv(STORIES, out))[0] == 0

    def interrupted(path):  # SIGTERM while the previous output is being deleted
        raise KeyboardInterrupt

    monkeypatch.setattr(pruners.io.output_dir, "_discard_old", interrupted)
    code, _, err = run_cli(capsys, "prune", "--model", STORIES, "--ratio", "0.3", "--out", out, "--force", "--quiet")
    assert code == 130 and f"{str(out)!r} was already replaced by the new, complete model" in err, err
    assert json.loads((out / "config.json").read_text())["depprune"]["run"]["config"]["ratio"] == 0.3


def test_standard_output_closed_or_full(tmp_path):
    closed = subprocess.run(f"{sys.executable} -m pruners.cli inspect --model {STORIES} >&-", shell=True, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert closed.returncode == 0 and closed.stderr == "", closed.stderr
    full = subprocess.run(f"{sys.executable} -m pruners.cli inspect --model {STORIES} > /dev/full", shell=True, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 2 and "cannot write the report to standard output (No space left on device)" in full.stderr


def test_a_short_context_model_prunes(tmp_path, capsys):
    model = tmp_path / "gpt2"
    tiny_gpt2(n_positions=8).save_pretrained(model)
    code, _, err = run_cli(capsys, *prune_argv(model, tmp_path / "o"))  # the logit probe fits 8 positions
    assert code == 0, err


def test_run_file_unknown_keys_and_alias_bombs_are_refused_quickly(tmp_path, capsys, no_weights_loaded):
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {STORIES}\nout: {tmp_path / 'o'}\nratio: 0.2\nbogus: 1\n")
    code, _, err = run_cli(capsys, "prune", "--config", path)
    assert_refused(code, err, "unknown option 'bogus' in --config; valid: aggregation, align, allow_nonfinite, calibration")
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]  # 10**8 strings if expanded
    path.write_text(f"model: {STORIES}\nout: {tmp_path / 'o'}\nratio: 0.2\n" + "\n".join(levels) + "\nkinds: *a7\n")
    start = time.monotonic()
    code, _, err = run_cli(capsys, "prune", "--config", path)
    assert code == 2 and len(err) < 1000 and time.monotonic() - start < 20, err


def test_a_ratio_that_removes_nothing_is_refused(tmp_path, capsys, no_weights_loaded):
    code, _, err = run_cli(capsys, "prune", "--model", STORIES, "--ratio", "1e-300", "--out", tmp_path / "o", "--quiet")
    assert_refused(code, err, "ratio 1e-300 of 260032 parameters removes none")


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", "--mod", STORIES, "--ratio", "0.2", "--out", tmp_path / "o")
    assert_refused(code, err, "unrecognized arguments: --mod")


def test_an_upper_case_json_suffix_is_still_alpaca(tmp_path):
    from pruners.importance.calibration import read_documents

    record = json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}])
    (tmp_path / "a.json").write_text(record)
    (tmp_path / "b.JSON").write_text(record)
    assert read_documents(tmp_path / "b.JSON") == read_documents(tmp_path / "a.json")
