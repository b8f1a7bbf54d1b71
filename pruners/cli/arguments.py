"""What every command shares: the parser that reports errors as one line, common options, checks of values."""

from __future__ import annotations

import argparse
import math
import sys

from ..errors import NonFiniteError, UsageError

LINE_LIMIT = 400  # characters of an error message shown without --debug


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --mod is not silently --model
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, not usage + message
        raise UsageError(message)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--debug`` and ``--trust-remote-code``: every command has them."""
    parser.add_argument("--debug", action="store_true", help="show the traceback behind an error message")
    parser.add_argument(
        "--trust-remote-code", action="store_true", default=False,
        help="allow running Python code shipped in a model directory (auto_map / custom model_type); never by default",
    )


def add_nonfinite_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-nonfinite``: for commands that compute with a model's weights."""
    parser.add_argument(
        "--allow-nonfinite", action="store_true", default=None,
        help="go on when weights, scores or logits hold NaN/Inf (default: refuse with an error)",
    )


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``: for commands that compute with a model's weights."""
    parser.add_argument(
        "--device", help="where the model runs: cpu, cuda or cuda:N (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "--dtype", help="float32, bfloat16 or float16: the precision the model is loaded, pruned, evaluated and saved in "
        "(default: the checkpoint's config.json dtype, float32 when it names none); scores and losses are float32 or wider",
    )


def check_device_options(device: str | None, dtype: str | None):
    """The ``--device`` (resolved: ``cuda`` is ``cuda:0``) after checking it and ``--dtype``, before any model is read."""
    from ..io.device import resolve_device, resolve_dtype

    if dtype is not None:
        resolve_dtype(dtype, None)
    return resolve_device(device)


NAME_MAX, PATH_MAX = 255, 4095  # bytes per path component and per path on Linux file systems


def check_path_argument(flag: str, value: object) -> str:
    """``value`` if it can name a file: a string without NUL, valid UTF-8, within Linux's length limits.

    >>> check_path_argument("--out", "out/pruned")
    'out/pruned'
    >>> check_path_argument("--model", 3)
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: --model must be a path (a string), got int 3
    """
    if not isinstance(value, str):
        raise UsageError(f"{flag} must be a path (a string), got {type(value).__name__} {value!r}"[:LINE_LIMIT])
    if "\x00" in value:
        raise UsageError(f"{flag} {value!r} holds a NUL character, which no file name can")
    check_utf8(flag, value)
    encoded = value.encode("utf-8")
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > NAME_MAX or len(encoded) > PATH_MAX:
        raise UsageError(
            f"{flag} {value[:40]!r}... is too long ({len(encoded)} bytes, longest name {longest}): file systems allow "
            f"{NAME_MAX} bytes per name and {PATH_MAX} per path"
        )
    return value


def read_config_option(args) -> dict:
    """The mapping in the ``--config`` run file (empty without one); a bad file is one UsageError naming it."""
    from ..config import read_run_file

    if not args.config:
        return {}
    check_path_argument("--config", args.config)
    try:
        return read_run_file(args.config)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--config: {e}") from e


def set_flags(args, data: dict, flag_keys: dict[str, tuple[str, ...]]) -> dict:
    """``data`` (a run file's mapping) with every flag given on the command line written at its path.

    ``flag_keys`` maps an argparse destination to its path in the run config, e.g.
    ``{"seed": ("train", "seed")}``; flags left out (``None``) keep the file's value.

    >>> set_flags(argparse.Namespace(seed=3, lr=None), {"train": {"lr": 0.1}}, {"seed": ("train", "seed"), "lr": ("train", "lr")})
    {'train': {'lr': 0.1, 'seed': 3}}
    """
    for flag, path in flag_keys.items():
        value = getattr(args, flag)
        if value is None:
            continue
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UsageError(f"{key} {short_repr(node)} in --config must be a mapping, e.g. {{{path[-1]}: ...}}")
        node[path[-1]] = value
    return data


def check_utf8(label: str, value: str) -> None:
    """Refuse a string holding undecodable bytes (Python keeps them as lone surrogates), shown escaped."""
    from ..io.text_input import is_text

    if not is_text(value):
        shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise UsageError(f"{label} {shown!r} is not valid UTF-8; rename the file or directory")


def short_repr(value) -> str:
    """``repr(value)`` cut short, so a huge (or YAML-alias-bombed) value costs nothing to report.

    >>> short_repr([[1, 2, 3, 4, 5, 6, 7]] * 1000)
    '[[1, 2, 3, 4, ...], [1, 2, 3, 4, ...], [1, 2, 3, 4, ...], [1, 2, 3, 4, ...], ...]'
    """
    import reprlib

    r = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 4, 4, 4, 4
    r.maxstring, r.maxother, r.maxlong = 80, 80, 40
    return r.repr(value)


def strict_json(value):
    """``value`` with every NaN/Inf float replaced by its name, so that ``json.dumps`` writes standard JSON.

    >>> strict_json({"ppl": float("nan"), "runs": [1.5, float("inf")]})
    {'ppl': 'nan', 'runs': [1.5, 'inf']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def check_finite_metrics(report: dict, keys, allow: bool, model: str | None = None) -> None:
    """A NaN/Inf metric is refused (the model would be unusable) unless ``--allow-nonfinite``."""
    bad = [k for k in keys if not math.isfinite(report[k])]
    if bad and not allow:
        whose = f"{model}: " if model else ""
        raise NonFiniteError(
            f"{whose}{', '.join(f'{k} is {report[k]}' for k in bad)}: the model computes NaN/Inf; "
            "pass --allow-nonfinite to report (and save) it anyway"
        )


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
