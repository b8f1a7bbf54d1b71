"""Pruning methods are registered by name; an installed package adds one to ``depprune prune --method``."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from pydantic import BaseModel, ConfigDict, Field

from pruners import prune
from pruners.cli import main
from pruners.errors import UsageError
from pruners.methods import METHODS, MethodFlag, load_methods, method_options, register_method, validate_method_options

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


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(1, ge=1, description="a count")
    note: str = Field("", description="a note")


@pytest.fixture
def method_with_options():
    seen = []

    @register_method("test-options", options=_Options, flags=(MethodFlag("--test-k", ("k",), "a count", {"type": int}),))
    def run(model, config, **kwargs):
        seen.append(method_options(config))
        kwargs.pop("prepared", None)
        return prune(model, config, **kwargs)

    yield seen
    METHODS.pop("test-options", None)


def test_method_options_are_validated_by_the_methods_config(method_with_options):
    assert validate_method_options("test-options", {"k": "3"}) == {"k": 3}  # defaults are left out
    with pytest.raises(UsageError, match=r"method 'test-options': method_options.k 0: Input should be greater"):
        validate_method_options("test-options", {"k": 0})
    with pytest.raises(UsageError, match=r"method_options.colour 'red': unknown option"):
        validate_method_options("test-options", {"colour": "red"})
    with pytest.raises(ValueError, match="flag --test-k is already registered by method 'test-options'"):
        register_method("test-other", flags=(MethodFlag("--test-k", ("k",), "again"),))(prune)
    assert "test-other" not in METHODS


@pytest.mark.shared
def test_a_methods_flag_and_run_file_options_reach_it(method_with_options, tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"method_options": {"note": "from the file", "k": 2}}))
    base = ["prune", "--model", str(STORIES), "--ratio", "0.2", "--quiet", "--config", str(tmp_path / "run.json")]
    assert main([*base, "--method", "test-options", "--test-k", "5", "--out", str(tmp_path / "a")]) == 0
    assert method_with_options[-1] == _Options(k=5, note="from the file")  # the flag overrides the file's k
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["depprune"]["run"]["config"]
    assert saved["method_options"] == {"k": 5, "note": "from the file"}
    code = main([*base, "--test-k", "5", "--out", str(tmp_path / "b")])  # one-shot takes neither
    err = capsys.readouterr().err
    assert code == 2 and "--test-k is an option of --method test-options, not of 'one-shot'" in err, err
    code = main([*base, "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "method 'one-shot' takes no method_options; got 'note', 'k'" in err, err
