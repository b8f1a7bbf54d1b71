"""The command registry: every ``depprune`` sub-command is found through an entry-point group.

A command is a :class:`Command` object; a package advertises it under ``depprune.commands``,
so ``recovery`` (``depprune recover``) or any plugin adds a command without the CLI importing
it.  depprune's own commands are registered the same way, in ``pyproject.toml``::

    [project.entry-points."depprune.commands"]
    prune = "pruners.cli.prune_command:COMMAND"

A command module should import only the standard library at module level (torch and
transformers inside ``run``), so that ``depprune --help`` starts at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

GROUP = "depprune.commands"


@dataclass(frozen=True)
class Command:
    """One sub-command: its name and help, its arguments, the work and how its report is shown.

    ``run(args)`` returns a JSON-serialisable report; ``show(report)`` prints it for people
    (``--json`` prints the report itself).  Errors the user caused are raised as
    :class:`~pruners.errors.DeppruneError`.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    show: Callable[[dict], None]
    description: str | None = None


def load_commands(group: str = GROUP) -> dict[str, Command]:
    """Every installed command by name, sorted; an entry point that is not a :class:`Command` named as advertised fails.

    >>> sorted(load_commands())[:3]
    ['eval', 'inspect', 'prune']
    """
    commands: dict[str, Command] = {}
    for ep in sorted(entry_points(group=group), key=lambda ep: ep.name):
        command = ep.load()
        if not isinstance(command, Command) or command.name != ep.name:
            raise TypeError(f"entry point {ep.name!r} = {ep.value!r} in {group!r} is not a Command named {ep.name!r}")
        if ep.name in commands:
            raise TypeError(f"two packages register the depprune command {ep.name!r}")
        commands[ep.name] = command
    if not commands:
        raise RuntimeError(f"no depprune commands are installed (entry-point group {group!r}); run `pip install -e .`")
    return commands
