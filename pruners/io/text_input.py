"""Reading an input file as UTF-8 text, with one-line :class:`~pruners.errors.InputFileError` messages.

Every reader of user files (calibration, evaluation, run files) starts here, so a file that is
missing, a directory, empty, only whitespace, binary or not UTF-8 is reported the same way,
naming the file and saying what was expected:

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "calib.txt"
>>> _ = p.write_bytes(b"caf\\xe9")
>>> read_text(p, "calibration file")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pruners.errors.InputFileError: calibration file '...calib.txt': not UTF-8: byte 0xe9 at offset 3 (line 1) cannot be decoded; expected UTF-8 text
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputFileError, first_line

__all__ = ["MissingInputFileError", "file_error", "json_error", "is_text", "json_type", "read_text"]


class MissingInputFileError(InputFileError, FileNotFoundError):
    """An input file that does not exist (also a FileNotFoundError, for callers that catch that)."""


def label(path: str | Path, what: str) -> str:
    """How messages name a file: ``"calibration file 'data/x.json'"`` (repr keeps odd names on one line)."""
    return f"{what} {str(path)!r}"


def file_error(path: str | Path, what: str, detail: str, cls: type[InputFileError] = InputFileError) -> InputFileError:
    """An InputFileError ``"<what> '<path>': <detail>"``, forced onto one line."""
    message = f"{label(path, what)}: {detail}"
    return cls(" ".join(message.splitlines()))  # every line boundary, not only \n


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_text(path: str | Path, what: str = "input file", expected: str = "UTF-8 text") -> str:
    """The text of ``path``, decoded as UTF-8 with universal newlines (as ``Path.read_text`` does).

    Raises :class:`InputFileError` (:class:`MissingInputFileError` for a missing file) when the
    file is missing, a directory, unreadable, empty, only whitespace, binary (NUL bytes, UTF-16)
    or not valid UTF-8 (naming the byte offset and line).  ``expected`` ends each message.
    """
    path = Path(path)
    if not path.exists():
        raise file_error(path, what, f"does not exist; expected a file of {expected}", MissingInputFileError)
    if path.is_dir():
        raise file_error(path, what, f"is a directory; expected a file of {expected}")
    if not path.is_file():  # a FIFO, socket or device (/dev/zero) would block or never end
        raise file_error(path, what, f"is not a regular file (a device, pipe or socket); expected a file of {expected}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise file_error(path, what, f"cannot be read ({e.strerror or type(e).__name__}); expected a file of {expected}") from e
    if not data:
        raise file_error(path, what, f"the file is empty (0 bytes); expected {expected}")
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors) is not text
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise file_error(path, what, f"starts with a UTF-16 byte-order mark; expected {expected} in UTF-8 (convert it first)")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise file_error(
            path, what, f"holds a NUL byte at offset {nul} (line {_line_of(data, nul)}): a binary file?; expected {expected}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise file_error(
            path, what,
            f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (line {_line_of(data, e.start)}) cannot be decoded; "
            f"expected {expected}",
        ) from None
    if not text.strip():
        raise file_error(path, what, f"holds only whitespace ({len(data)} bytes); expected {expected}")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, like open(..., newline=None)


def is_text(value) -> bool:
    """A string that is valid Unicode (JSON may escape an unpaired surrogate, ``"\\ud800"``, that no tokenizer takes).

    >>> is_text("café"), is_text("\\ud800"), is_text(3)
    (True, False, False)
    """
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_type(value) -> str:
    """A JSON value's kind with its article, for messages: ``'a string'``, ``'an array'``, ``'null'``."""
    if isinstance(value, str) and not is_text(value):
        return "a string with an unpaired \\u surrogate escape (not valid Unicode)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def json_error(e: Exception) -> str:
    """A one-line description of why ``json.loads`` failed (position included when known)."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno}, column {e.colno}"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return first_line(e) or type(e).__name__
