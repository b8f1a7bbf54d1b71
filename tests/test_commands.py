"""The CLI knows no commands: every command, depprune's own too, comes through the ``depprune.commands`` entry points."""

from __future__ import annotations

import json
import textwrap

import pytest

from pruners.cli import main
from pruners.cli.registry import Command, load_commands

from zoo import install_package

HELLO = textwrap.dedent(
    '''
    from pruners.cli.registry import Command
    from pruners.errors import UsageError

    def add_arguments(p):
        p.add_argument("--name", required=True)
        p.add_argument("--json", action="store_true")

    def run(args):
        if args.name == "nobody":
            raise UsageError("--name 'nobody' is not a name")
        return {"greeting": f"hello {args.name}"}

    def show(report):
        print(report["greeting"])

    COMMAND = Command("hello", "say hello", add_arguments, run, show)
    NOT_A_COMMAND = object()
    '''
)


def install(tmp_path, monkeypatch, entry_points: str) -> None:
    """The ``depprune_hello`` package on sys.path, advertising ``entry_points``."""
    install_package(tmp_path, monkeypatch, "depprune_hello", HELLO, entry_points)


def test_depprunes_own_commands_are_registered_entry_points():
    commands = load_commands()
    assert {"inspect", "prune", "eval"} <= set(commands)
    assert all(isinstance(c, Command) and c.name == name for name, c in commands.items())


def test_an_installed_package_adds_a_command(tmp_path, monkeypatch, capsys):
    install(tmp_path, monkeypatch, "[depprune.commands]\nhello = depprune_hello:COMMAND\n")
    assert main(["hello", "--name", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"
    assert main(["hello", "--name", "world", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"greeting": "hello world"}
    assert main(["hello", "--name", "nobody"]) == 2  # its errors go through the one error funnel
    assert capsys.readouterr().err == "error: depprune hello: --name 'nobody' is not a name\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "hello" in capsys.readouterr().out


def test_an_entry_point_that_is_not_a_command_is_refused(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "[depprune.commands]\nhello = depprune_hello:NOT_A_COMMAND\n")
    with pytest.raises(TypeError, match="'hello' = 'depprune_hello:NOT_A_COMMAND' .* is not a Command named 'hello'"):
        load_commands()


def test_the_depprune_script_is_main_then_exit_with_the_collector_tuned(tmp_path, monkeypatch, capsys):
    """The console script (and ``python -m pruners.cli``) runs :func:`main` with the oldest generation
    collected less often, then exits with its code after ``gc.freeze()`` (see ``entry``)."""
    import gc
    import importlib
    import runpy
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "depprune"]
    assert script.value == "pruners.cli:entry"
    cli_main = importlib.import_module("pruners.cli.main")
    saved = gc.get_threshold()
    calls = []

    def fake_main(argv=None):
        calls.append(("main", gc.get_threshold()))
        return 2

    def interrupted(argv=None):
        calls.append(("main", gc.get_threshold()))
        raise SystemExit(0)  # e.g. --help from argparse

    monkeypatch.setattr(gc, "freeze", lambda: calls.append(("freeze", None)))
    tuned = [("main", (saved[0], saved[1], 100)), ("freeze", None)]  # frozen after the work, never before it
    try:
        monkeypatch.setattr(cli_main, "main", fake_main)
        with pytest.raises(SystemExit) as e:
            script.load()()
        assert e.value.code == 2 and calls == tuned

        calls.clear()
        monkeypatch.setattr(cli_main, "main", interrupted)
        with pytest.raises(SystemExit):
            script.load()()
        assert calls == tuned

        calls.clear()  # python -m pruners.cli is the same
        with pytest.raises(SystemExit):
            runpy.run_module("pruners.cli", run_name="__main__")
        assert calls == tuned
    finally:
        gc.set_threshold(*saved)
    assert main(["inspect", "--model", str(tmp_path / "missing")]) == 2  # main in-process leaves the collector alone
    assert "missing" in capsys.readouterr().err and gc.get_threshold() == saved
