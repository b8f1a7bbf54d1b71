"""``python -m pruners.cli`` is ``depprune``."""

from .main import entry

entry()
