"""Estimator plugins: an installed package advertising ``depprune.estimators`` shows up in the CLI."""

from __future__ import annotations

import sys
import textwrap

import pytest

from pruners.cli import main
from pruners.importance import ESTIMATORS, load_plugins

from zoo import install_package

PLUGIN = textwrap.dedent(
    '''
    import torch
    from pydantic import BaseModel, Field
    from pruners.importance import member_reduce, register_estimator

    class CubeConfig(BaseModel):
        power: float = Field(3.0, description="exponent applied to |w|")

    @register_estimator("test-cube", config=CubeConfig)
    class Cube:
        """Sum of |w|^p over each unit."""
        needs = frozenset()
        def __init__(self, config):
            self.config = config
        def score(self, group, ctx):
            return member_reduce(group, ctx, lambda w: w.abs().pow(self.config.power))
    '''
)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    install_package(tmp_path, monkeypatch, "depprune_cube", PLUGIN, "[depprune.estimators]\ncube = depprune_cube\n")
    yield
    ESTIMATORS.pop("test-cube", None)
    sys.modules.pop("depprune_cube", None)


def test_plugin_is_loaded_and_listed_in_help(installed_plugin, capsys):
    assert "cube" in load_plugins()
    assert "test-cube" in ESTIMATORS
    with pytest.raises(SystemExit) as e:
        main(["prune", "--help"])
    assert e.value.code == 0
    assert "test-cube" in "".join(capsys.readouterr().out.split())  # help text wraps lines
