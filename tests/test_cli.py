"""The depprune CLI: inspect output, and every bad input gives one line, exit code 2 and no OUT."""

from __future__ import annotations

import json
import shutil

import pytest

from pruners.cli import main

from zoo import MODELS, STORIES

pytestmark = pytest.mark.shared


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
    assert report["layers"] == {"stack": "model.layers", "count": 5, "exported": 2}  # three replicated


def test_inspect_text_says_which_layers_were_exported(capsys):
    code, out, _ = run_cli(capsys, "inspect", "--model", str(STORIES))
    assert code == 0
    assert "decoder layers: 5 in model.layers, 2 exported, 3 replicated from them" in out


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
    "kind ratio of an unknown kind": (
        ["--kind-ratio", "layers=0.5"],
        (
            "--kind-ratio: 'layers=0.5' is not KIND=FRACTION with FRACTION in (0, 1) and KIND one of attention, "
            "attention_head, kv_group, query_head, mlp_channel, hidden_channel"
        ),
    ),
    "kind ratio not a number": (["--kind-ratio", "mlp_channel=half"], "'mlp_channel=half' is not KIND=FRACTION"),
    "kind ratio of one": (["--kind-ratio", "mlp_channel=1"], "'mlp_channel=1' is not KIND=FRACTION"),
    "kind ratio negative": (["--kind-ratio", "attention=-0.2"], "'attention=-0.2' is not KIND=FRACTION"),
    "kind ratio without fraction": (["--kind-ratio", "mlp_channel"], "'mlp_channel' is not KIND=FRACTION"),
    "ratio and kind ratio": (["--kind-ratio", "mlp_channel=0.5"], "--ratio (a fraction of parameters) or --kind-ratio"),
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
    code, _, err = run_cli(capsys, *argv)
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
    # the checkpoint says how it was made: the whole run config and the report
    run = json.loads((out / "config.json").read_text())["depprune"]["run"]
    assert run["config"]["importance"] == "random" and run["config"]["ratio"] == 0.3 and run["config"]["seed"] == 0
    assert run["config"]["kinds"] == ["query_head", "mlp_channel"] and run["report"] == report
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
    assert code == 2 and "one of --ratio / --kind-ratio is required" in err
    assert not (tmp_path / "o").exists()


# -- --kind-ratio: a fraction of units per kind instead of --ratio ----------------------------

KIND_RATIO_BAD = {
    "empties a layer": (["--kind-ratio", "attention=0.9"], "kind ratio attention=0.9 would remove every kv_group unit of layer 0"),
    "given twice": (["--kind-ratio", "mlp_channel=0.5", "--kind-ratio", "mlp_channel=0.4"], "mlp_channel is given twice"),
    "kinds differ": (["--kinds", "attention", "--kind-ratio", "mlp_channel=0.5"], "differ from the kind_ratios kinds"),
    "kind the model lacks": (["--kind-ratio", "attention_head=0.5"], "no groups of kinds ['attention_head']"),
    "query heads with KV groups": (["--kind-ratio", "query_head=0.5", "--kind-ratio", "attention=0.25"], "not both"),
    "below min units": (["--kind-ratio", "attention=0.75", "--min-units", "2"], "would leave fewer than --min-units 2"),
}


@pytest.mark.parametrize("case", sorted(KIND_RATIO_BAD))
def test_bad_kind_ratio_is_one_line_exit_2_and_no_output(case, tmp_path, capsys):
    extra, message = KIND_RATIO_BAD[case]
    code, _, err = run_cli(capsys, "prune", "--model", str(STORIES), "--out", str(tmp_path / "out"), *extra, "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "run,message",
    [
        ({"ratio": 0.2, "kind_ratios": {"mlp_channel": 0.5}}, "give exactly one target: ratio"),
        ({"kind_ratios": {"mlp_channel": 2}}, "--kind-ratio 'mlp_channel=2' is not KIND=FRACTION"),
        ({"kind_ratios": {"heads": 0.5}}, "'heads=0.5' is not KIND=FRACTION"),
        ({"kind_ratios": ["mlp_channel", 0.5]}, "must map kinds to fractions"),
    ],
)
def test_bad_kind_ratios_in_run_file(run, message, tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": str(STORIES), "out": str(tmp_path / "o"), **run}))
    code, _, err = run_cli(capsys, "prune", "--config", str(path), "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "file,flags,expect",
    [  # (ratio, kind_ratios, kinds) of the merged run config
        ({"ratio": 0.3, "kinds": ["mlp_channel"]}, ["--kind-ratio", "attention=0.25"], (None, {"attention": 0.25}, ["attention"])),
        ({"ratio": 0.3, "kinds": ["mlp_channel"]}, ["--kind-ratio", "mlp_channel=0.5", "--kinds", "mlp_channel"],
         (None, {"mlp_channel": 0.5}, ["mlp_channel"])),
        ({"kind_ratios": {"mlp_channel": 0.5}}, ["--ratio", "0.2"], (0.2, None, ["attention", "mlp_channel"])),
        ({"kind_ratios": {"mlp_channel": 0.5}}, ["--kind-ratio", "query_head=0.5"], (None, {"query_head": 0.5}, ["query_head"])),
        ({"kind_ratios": {"mlp_channel": 0.5}}, [], (None, {"mlp_channel": 0.5}, ["mlp_channel"])),
    ],
)
def test_command_line_target_replaces_the_run_files(file, flags, expect, tmp_path):
    from pruners.cli.main import build_parser
    from pruners.cli.prune_command import run_config
    from pruners.cli.registry import load_commands

    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"model": str(STORIES), "out": str(tmp_path / "o"), **file}))  # JSON is YAML
    cfg = run_config(build_parser(load_commands()).parse_args(["prune", "--config", str(path), *flags]))
    assert (cfg.ratio, cfg.kind_ratios, cfg.kinds) == expect


def inspect_units(capsys, model_dir) -> tuple[dict, int]:
    """Units per group id and the parameter count, from ``depprune inspect --json``."""
    code, stdout, err = run_cli(capsys, "inspect", "--model", str(model_dir), "--json")
    assert code == 0, err
    return {g["id"]: g["units"] for g in json.loads(stdout)["groups"]}, json.loads(stdout)["params"]


@pytest.mark.slow
def test_prune_with_kind_ratios_writes_the_asked_head_and_channel_counts(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "prune", "--model", str(STORIES), "--kind-ratio", "attention=0.25",
                                "--kind-ratio", "mlp_channel=0.5", "--importance", "random", "--out", str(out), "--json", "--quiet")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["ratio_target"] is None and report["kind_ratios"] == {"attention": 0.25, "mlp_channel": 0.5}
    assert report["kinds"] == ["attention", "mlp_channel"]
    removed = 5 * 1 * 3072 + 5 * 86 * 192  # one KV group of 4 and 86 MLP channels of 172 in each of 5 layers
    assert report["params_before"] - report["params_after"] == removed
    assert report["ratio_achieved"] == round(removed / report["params_before"], 6)
    assert report["group_ratio"] == round((5 + 430) / (20 + 860), 6)
    assert {k: s["removed_units"] for k, s in report["removed"].items()} == {"kv_group": 5, "mlp_channel": 430}
    units, params = inspect_units(capsys, out)
    assert params == report["params_after"]
    for layer in range(5):  # 3 KV groups of 2 query heads, 86 MLP channels
        assert (units[f"kv_group@{layer}"], units[f"query_head@{layer}"], units[f"mlp_channel@{layer}"]) == (3, 6, 86)


@pytest.mark.slow
def test_kind_ratio_overrides_the_run_files_ratio_and_prints_its_target(tmp_path, capsys):
    run = tmp_path / "run.yaml"
    run.write_text(f"model: {STORIES}\nout: {tmp_path / 'o'}\nratio: 0.95\nkinds: [mlp_channel]\nlayers: [1, -1]\n")
    code, stdout, err = run_cli(capsys, "prune", "--config", str(run), "--kind-ratio", "query_head=0.5", "--quiet")
    assert code == 0, err
    assert "(kind ratios query_head=0.5); group ratio 0.500" in stdout, stdout
    assert "query_head           12 of     24 units" in stdout, stdout  # layers 1-3: one head of each pair
    units, _ = inspect_units(capsys, tmp_path / "o")
    assert units["query_head@0"] == units["query_head@4"] == 8
    # one query head per KV value head left: layers 1-3 now trace as plain multi-head attention, 4 heads each
    assert [units.get(f"attention_head@{i}") for i in range(5)] == [None, 4, 4, 4, None]
    assert [units[f"mlp_channel@{i}"] for i in range(5)] == [172] * 5


def test_prune_align_writes_a_plain_config_with_aligned_widths(tmp_path, capsys):
    out = tmp_path / "aligned"
    code, _, err = run_cli(capsys, "prune", "--model", str(STORIES), "--ratio", "0.2", "--kinds", "mlp_channel",
                           "--align", "16", "--out", str(out), "--quiet")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["depprune"]["hf_loadable"] is True and "auto_map" not in cfg
    assert cfg["intermediate_size"] % 16 == 0 and cfg["intermediate_size"] < 172
