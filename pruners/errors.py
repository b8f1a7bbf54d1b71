"""The errors a user can cause.  Every one of them is a :class:`DeppruneError`.

The command line turns a :class:`DeppruneError` (and depgraph's tracing errors) into one line
on stderr and exit code 2, in one place (:func:`pruners.cli.main`); any other exception is a
bug and is reported as an internal error.  Library code raises the most specific class below
with a message that names the bad value and says what would be valid, on one line.

>>> issubclass(InputFileError, DeppruneError) and issubclass(InputFileError, ValueError)
True
>>> str(InputFileError("calib.txt: the file is empty; expected UTF-8 text"))
'calib.txt: the file is empty; expected UTF-8 text'
"""

from __future__ import annotations


class DeppruneError(Exception):
    """Bad input, reported as one line on stderr with exit code 2 (never a traceback)."""


class UsageError(DeppruneError, ValueError):
    """A command-line or run-config value that is invalid or inconsistent."""


class InputFileError(DeppruneError, ValueError):
    """A data or config file (calibration, evaluation, run file) that cannot be used as given."""


class ModelSourceError(DeppruneError, ValueError):
    """The given path is not a model depprune can load safely (missing, corrupt, inconsistent)."""


class PlanError(DeppruneError, ValueError):
    """A pruning target or plan that cannot be met or executed (unknown group, every unit removed, ...)."""


class OutputError(DeppruneError, OSError):
    """The output directory cannot be written or replaced without risking other data."""


class NonFiniteError(DeppruneError, ValueError):
    """NaN or Inf in weights, scores or logits (allowed only with ``--allow-nonfinite``)."""


def first_line(text: object) -> str:
    """The first non-blank line of ``text`` (an exception's message, a parser's report), stripped.

    >>> first_line(ValueError("\\n  bad value\\n  at line 3"))
    'bad value'
    """
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""
