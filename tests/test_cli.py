"""The depprune CLI: inspect output, and every bad input gives one line, exit code 2 and no OUT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pruners.cli import main

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
STORIES = MODELS / "stories260K"

pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/models is not present")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json_lists_groups_and_params(capsys):
    code, out, err = run_cli(capsys, "inspect", "--model", str(STORIES), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["params"] == 260032
    kinds = {(g["kind"], g["layer"], g["units"]) for g in report["groups"]}
    assert ("kv_group", 0, 4) in kinds and ("mlp_channel", 4, 172) in kinds and ("hidden_channel", None, 64) in kinds


def test_inspect_config_only_directory_is_traced_on_meta(tmp_path, capsys):
    cfg = json.loads((STORIES / "config.json").read_text())
    cfg.update(hidden_size=8192, intermediate_size=28672, num_hidden_layers=2, num_attention_heads=64,
               num_key_value_heads=8, head_dim=128, vocab_size=32000)  # 70B-shaped layers, no weights
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, out, err = run_cli(capsys, "inspect", "--model", str(tmp_path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert {(g["kind"], g["units"]) for g in report["groups"] if g["layer"] == 1} == {
        ("kv_group", 8), ("query_head", 64), ("mlp_channel", 28672)
    }


def test_inspect_text_table(capsys):
    code, out, _ = run_cli(capsys, "inspect", "--model", str(STORIES))
    assert code == 0
    assert "kv_group@0" in out and "groups by kind:" in out


BAD = {
    "missing model dir": (["--model", "/nonexistent/model"], "does not exist"),
    "not a model dir": (["--model", str(MODELS)], "no config.json"),
    "unreachable hub id": (["--model", "depprune-tests/no-such-model"], "could not be fetched from the Hugging Face hub"),
    "ratio zero": (["--ratio", "0"], "--ratio 0.0 is outside (0, 1)"),
    "ratio one": (["--ratio", "1"], "--ratio 1.0 is outside (0, 1)"),
    "ratio negative": (["--ratio", "-0.2"], "--ratio -0.2 is outside (0, 1)"),
    "ratio removing every unit": (["--ratio", "0.85"], "would remove every"),
    "unknown importance": (["--importance", "magic"], "unknown --importance 'magic'; valid: flap, l1, l2, random, taylor-"),
    "unknown kind": (["--kinds", "layers"], "--kinds"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_no_output(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # tests never reach the network
    overrides, message = BAD[case]
    args = {"--model": str(STORIES), "--ratio": "0.2", "--importance": "l2", "--out": str(tmp_path / "out")}
    extra = []
    for i in range(0, len(overrides), 2):
        if overrides[i] in args:
            args[overrides[i]] = overrides[i + 1]
        else:
            extra += overrides[i : i + 2]
    argv = ["prune"] + [x for kv in args.items() for x in kv] + extra + ["--quiet"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary leftovers


def test_non_empty_out_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = run_cli(capsys, "prune", "--model", str(STORIES), "--ratio", "0.2", "--out", str(out), "--quiet")
    assert code == 2 and "pass --force" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "precious"


def test_ratio_beyond_capacity_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", "--model", str(STORIES), "--ratio", "0.95", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 2 and "0.95" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_prune_writes_loadable_model_and_source_is_untouched(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(STORIES, src)
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "prune", "--model", str(src), "--ratio", "0.3", "--importance", "random",
                            "--kinds", "query_head", "mlp_channel", "--out", str(out), "--json", "--quiet")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["params_after"] < report["params_before"]
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before
    code, stdout, err = run_cli(capsys, "inspect", "--model", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["params"] == report["params_after"]


def test_run_config_file_with_command_line_override(tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text(
        f"model: {STORIES}\nout: {tmp_path / 'from-file'}\nratio: 0.95\nimportance: l1\n"
        "kinds: [mlp_channel]\nlayers: [1, -1]\nround_to: 4\n"
    )
    code, out, err = run_cli(capsys, "prune", "--config", str(run), "--ratio", "0.1", "--json", "--quiet")
    assert code == 0, err
    report = json.loads(out)
    assert report["ratio_target"] == 0.1 and report["importance"] == "l1" and report["layers"] == [1, -1]
    assert (tmp_path / "from-file" / "config.json").is_file()
    cfg = json.loads((tmp_path / "from-file" / "config.json").read_text())
    kept = {gid.split("@")[1]: len(units) for gid, units in cfg["depprune"]["record"]["kept"].items()}
    assert set(kept) == {"1", "2", "3"} and all(n % 4 == 0 for n in kept.values())  # layers 0 and 4 untouched


def test_run_config_errors_name_the_bad_value(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"model": str(STORIES), "out": str(tmp_path / "o"), "ratio": 0.2, "strategy": "greedy"}))
    code, _, err = run_cli(capsys, "prune", "--config", str(run), "--quiet")
    assert code == 2 and "--strategy 'greedy'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "prune", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(capsys, "prune", "--model", str(STORIES), "--out", str(tmp_path / "o"))
    assert code == 2 and "--ratio is required" in err
    assert not (tmp_path / "o").exists()
