"""The ``depprune`` command line: :func:`main` runs the commands registered under ``depprune.commands``."""

from .main import main

__all__ = ["main"]
