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
from typing import Any, Protocol

GROUP = "depprune.commands"


class Stage(Protocol):
    """Work a command can also do on a model another command has just made, in the same run.

    ``depprune prune --recover FILE`` runs the ``recover`` command's stage on the pruned model
    before anything is written: the pruning command knows the stage only through this protocol
    (found on the registered command), never by importing its package.  The three calls come in
    the order of a run, so bad input is refused before the long work:

    - ``check(options, model, allow_nonfinite=, trust_remote_code=)``: the stage's options (a
      mapping from the run file) validated, and its input files read; ``model`` is the directory
      of the source model, opened under the run's own ``--allow-nonfinite`` and
      ``--trust-remote-code``.  Returns the stage's config.  Before any model is loaded.
    - ``prepare(config, tokenizer)``: what needs the tokenizer (e.g. tokenised data); before the weights.
    - ``apply(config, prepared, model, source_model, tokenizer, progress)``: the work, on ``model``
      (which it may change in place); ``source_model`` is the unpruned model.  Returns the new
      model, a JSON-serialisable record of the stage (for the run's report and ``config.json``)
      and a function that writes the stage's own files into the output directory being filled.
    """

    def inputs(self, config) -> list[str]: ...  # the files the stage reads (the output may not overlap them)

    def check(self, options: dict, model: str, *, allow_nonfinite: bool, trust_remote_code: bool) -> Any: ...

    def prepare(self, config, tokenizer) -> Any: ...

    def apply(
        self, config, prepared, model, source_model, tokenizer, progress: bool
    ) -> tuple[Any, dict, Callable[[Any], None]]: ...


@dataclass(frozen=True)
class Command:
    """One sub-command: its name and help, its arguments, the work and how its report is shown.

    ``run(args)`` returns a JSON-serialisable report; ``show(report)`` prints it for people
    (``--json`` prints the report itself).  Errors the user caused are raised as
    :class:`~pruners.errors.DeppruneError`.  ``stage``, optional, is the command's work as a
    :class:`Stage` that other commands chain.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    show: Callable[[dict], None]
    description: str | None = None
    stage: Stage | None = None  # what another command's run may chain (``prune --recover`` uses recover's)


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
