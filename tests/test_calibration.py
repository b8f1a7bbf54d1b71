"""Calibration samples: formats, determinism under a seed, and the CLI paths that use them."""

from __future__ import annotations

import json

import pytest
import torch

from pruners.importance.calibration import CalibrationConfig, calibration_samples, read_documents

from zoo import SHARED, STORIES

TRAIN = SHARED / "data" / "tinystories-train" / "tinystories-train.cased.txt"
ALPACA = SHARED / "data" / "alpaca" / "alpaca_small_2000.json"
pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STORIES)


def test_text_samples_are_seeded_windows_starting_anywhere(tok):
    a = calibration_samples(CalibrationConfig(source=TRAIN, samples=4, seq_len=64), tok, seed=1)
    b = calibration_samples(CalibrationConfig(source=TRAIN, samples=4, seq_len=64), tok, seed=1)
    c = calibration_samples(CalibrationConfig(source=TRAIN, samples=4, seq_len=64), tok, seed=2)
    assert len(a) == 4 and all(s.shape == (1, 64) and s.dtype == torch.long for s in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_alpaca_records_use_the_prompt_template(tmp_path, tok):
    docs = read_documents(ALPACA)
    assert len(docs) == 2000 and docs[0].startswith("Below is an instruction") and "### Response:" in docs[0]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in json.loads(ALPACA.read_text())[:30]))
    samples = calibration_samples(CalibrationConfig(source=jsonl, samples=3, seq_len=16), tok)
    assert [s.shape for s in samples] == [(1, 16)] * 3


def test_short_documents_are_joined(tmp_path, tok):
    f = tmp_path / "short.txt"
    f.write_text("\n\n".join(["Tom ran."] * 40))
    assert calibration_samples(CalibrationConfig(source=f, samples=2, seq_len=30), tok)[0].shape == (1, 30)


def test_bad_calibration_inputs(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_documents(tmp_path / "nope.txt")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(ValueError, match="Alpaca records"):
        read_documents(bad)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Hi.")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        calibration_samples(CalibrationConfig(source=tiny, samples=1, seq_len=64), tok)


def test_cli_refuses_gradient_importance_without_calibration(tmp_path, capsys):
    from pruners.cli import main

    code = main(["prune", "--model", str(STORIES), "--ratio", "0.2", "--importance", "taylor-element",
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "pass --calibration FILE" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("importance", ["taylor-vector", "taylor-element", "taylor-second", "taylor-mix", "wanda-sp", "flap"])
def test_cli_prunes_with_every_calibration_estimator(importance, tmp_path, capsys):
    from pruners.cli import main

    code = main(["prune", "--model", str(STORIES), "--ratio", "0.1", "--importance", importance, "--kinds", "mlp_channel",
                 "--calibration", str(TRAIN), "--calibration-samples", "2", "--calibration-seq-len", "32",
                 "--out", str(tmp_path / "o"), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["importance"] == importance and report["params_after"] < report["params_before"]


@pytest.mark.parametrize("activation_memory", ["0", "0.5", "auto"])
def test_the_activation_memory_flag_gives_the_same_pruned_model(activation_memory, tmp_path, capsys):
    """How much memory Taylor's backward may keep activations in changes its time, not its plan."""
    from safetensors.torch import load_file

    from pruners.cli import main

    out = tmp_path / activation_memory
    code = main(["prune", "--model", str(STORIES), "--ratio", "0.2", "--importance", "taylor-element",
                 "--calibration", str(TRAIN), "--calibration-samples", "2", "--calibration-seq-len", "32",
                 "--calibration-activation-memory", activation_memory, "--out", str(out), "--json", "--quiet"])
    assert code == 0, capsys.readouterr().err
    reference = tmp_path / "reference"
    if not reference.exists():
        assert main(["prune", "--model", str(STORIES), "--ratio", "0.2", "--importance", "taylor-element",
                     "--calibration", str(TRAIN), "--calibration-samples", "2", "--calibration-seq-len", "32",
                     "--calibration-activation-memory", "0", "--out", str(reference), "--json", "--quiet"]) == 0
    got, want = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
