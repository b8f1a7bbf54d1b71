"""The ``depprune`` command line: :func:`main` runs the commands registered under ``depprune.commands``;
:func:`entry` is the ``depprune`` script (main, then exit)."""

from .main import entry, main

__all__ = ["entry", "main"]
