"""Pruning methods are registered by name; an installed package adds one to ``depprune prune --method``."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from pruners.cli import main
from pruners.methods import METHODS, load_methods

from zoo import STORIES, install_package

LEARNED = textwrap.dedent(
    '''
    from pruners import prune
    from pruners.methods import register_method

    @register_method("test-l1-only")
    def l1_only(model, config, **kwargs):
        """A stand-in for a training-based pruner: whatever --importance says, prune by l1."""
        return prune(model, config.model_copy(update={"importance": "l1"}), **kwargs)
    '''
)


@pytest.fixture
def installed_method(tmp_path, monkeypatch):
    install_package(tmp_path, monkeypatch, "depprune_learned", LEARNED, "[depprune.methods]\nlearned = depprune_learned\n")
    yield
    METHODS.pop("test-l1-only", None)
    sys.modules.pop("depprune_learned", None)


def test_one_shot_is_the_built_in_method():
    from pruners import prune

    assert METHODS["one-shot"].run is prune


@pytest.mark.shared
def test_an_installed_method_runs_under_prune_method(installed_method, tmp_path, capsys):
    assert "learned" in load_methods()
    base = ["prune", "--model", str(STORIES), "--ratio", "0.2", "--importance", "l2", "--json", "--quiet"]
    assert main([*base, "--method", "test-l1-only", "--out", str(tmp_path / "m")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "test-l1-only"
    assert main([*base, "--importance", "l1", "--out", str(tmp_path / "l1")]) == 0  # what the method does
    l1 = json.loads(capsys.readouterr().out)
    assert report["removed"] == l1["removed"] and report["params_after"] == l1["params_after"]
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["depprune"]
    assert saved["run"]["config"]["method"] == "test-l1-only"
    assert saved["record"]["kept"] == json.loads((tmp_path / "l1" / "config.json").read_text())["depprune"]["record"]["kept"]


@pytest.mark.shared
def test_an_unknown_method_is_one_line(tmp_path, capsys):
    code = main(["prune", "--model", str(STORIES), "--ratio", "0.2", "--method", "nope", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--method 'nope': unknown pruning method 'nope'; registered: compresso, one-shot" in err, err
    assert not (tmp_path / "o").exists()
