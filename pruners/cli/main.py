"""``depprune``'s entry point: parse, run one registered command, and turn every error into a message and an exit code."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
from typing import NoReturn

from ..errors import DeppruneError, UsageError, first_line
from .arguments import LINE_LIMIT, Parser, check_utf8, strict_json
from .registry import Command, load_commands

EXIT_USAGE = 2  # bad input: one line on stderr, nothing written

EXIT_INTERNAL = 1  # a bug: "internal error, please report"


OLDEST_GENERATION_THRESHOLD = 100  # the script's gc threshold for the oldest generation (Python's default: 10)


def entry() -> NoReturn:
    """The ``depprune`` console script: :func:`main` on ``sys.argv``, then exit with its code.

    Two settings of the garbage collector, for the script's process only (:func:`main` called
    in-process, e.g. by tests, leaves the collector alone):

    - The oldest generation is collected after :data:`OLDEST_GENERATION_THRESHOLD` collections
      of the middle one instead of 10.  Each full collection walks every live object, and
      importing torch and transformers creates about half a million that live as long as the
      process: with the default, seven full collections during those imports cost 0.7 s.
      Young garbage is collected as often as before, and large tensors are freed by reference
      counting, not by the collector.
    - Before the interpreter tears down, every object still alive is frozen (``gc.freeze``), so
      the teardown's full collections skip them (another second).  The work is done and its
      files closed by then; atexit handlers still run.

    Together they take ``depprune inspect`` of a 70B model from about 6 s to about 4.6 s here
    (``benchmarks/results/trace_meta.md``).
    """
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, OLDEST_GENERATION_THRESHOLD)
    try:
        sys.exit(main())
    finally:
        gc.freeze()


def build_parser(commands: dict[str, Command]) -> Parser:
    """The ``depprune`` parser with one sub-parser per registered command."""
    p = Parser(prog="depprune", description="Structured pruning of causal language models.")
    p.add_argument("--debug", action="store_true", help="show the traceback behind an error message")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in commands.values():
        command.add_arguments(sub.add_parser(command.name, help=command.help, description=command.description))
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; the one place where errors become messages and exit codes.

    A :class:`~pruners.errors.DeppruneError` (and depgraph's tracing errors) is bad input: its
    first line on stderr, exit code 2.  Any other exception is a bug: "internal error, please
    report", exit code 1, the traceback only with ``--debug``.  SIGINT and SIGTERM end the run
    as an interrupt (exit 130 / 143) after the output directory has been cleaned up.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    for stream in ("stdout", "stderr"):  # started with a closed stream (`>&-`): nothing to print to
        if getattr(sys, stream) is None:
            setattr(sys, stream, open(os.devnull, "w"))  # noqa: SIM115  (lives as long as the process)
    where = "depprune"
    try:
        with _signals_as_interrupts():
            commands = load_commands()
            command = next((a for a in argv if a in commands), None)
            where = f"depprune {command}" if command else "depprune"
            _check_text_arguments(argv)
            _quiet_libraries()
            from ..importance import load_plugins
            from ..methods import load_methods

            load_plugins()  # estimators from installed packages show up in --help and --importance
            load_methods()  # and pruning methods in --method
            args = build_parser(commands).parse_args([a for a in argv if a != "--debug"])
            command = commands[args.command]
            report = command.run(args)
            try:
                print(json.dumps(strict_json(report), allow_nan=False)) if getattr(args, "json", False) else command.show(report)
                sys.stdout.flush()  # a closed pipe shows here, inside the try
            except BrokenPipeError:
                raise
            except OSError as e:  # a full disk, /dev/full: the work itself is done
                raise UsageError(f"cannot write the report to standard output ({e.strerror or e})") from e
    except BrokenPipeError:  # e.g. `depprune inspect | head -1`: the reader has what it wanted
        _discard_stdout()
        return 0
    except DeppruneError as e:
        _report(f"{where}: {one_line(e)}", debug)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        replaced = getattr(e, "replaced", None)
        what = f"{replaced!r} was already replaced by the new, complete model" if replaced else "no output was written or replaced"
        _report(f"{where}: interrupted by {signal.Signals(signum).name}; {what}", debug)
        return 128 + signum

    except Exception as e:  # noqa: BLE001  (the one place that turns a crash into a report)
        if _is_trace_error(e):  # depgraph cannot trace this model: bad input, not a bug
            _report(f"{where}: {one_line(e)}", debug)
            return EXIT_USAGE
        _report(
            f"{where}: internal error, please report it ({type(e).__name__}: {one_line(e)}); "
            "rerun with --debug for the traceback", debug
        )
        return EXIT_INTERNAL
    return 0


def _is_trace_error(e: BaseException) -> bool:
    """depgraph's tracing errors (imported lazily, so that ``main`` starts before torch does)."""
    tracer = sys.modules.get("depgraph.tracer")
    return tracer is not None and isinstance(e, (tracer.TraceError, tracer.UnsupportedOpError))


def one_line(e: BaseException) -> str:
    """The first line of ``e``'s message, at most :data:`LINE_LIMIT` characters.

    >>> one_line(ValueError("first\\nsecond"))
    'first (more with --debug)'
    """
    line = first_line(e) or type(e).__name__
    text = line if len(line) <= LINE_LIMIT else line[: LINE_LIMIT - 1] + "…"
    return text + (" (more with --debug)" if text != str(e).strip() else "")


def _report(message: str, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)


def _check_text_arguments(argv: list[str]) -> None:
    """Refuse arguments that are not valid UTF-8 (paths with undecodable bytes) before anything uses them."""
    for a in argv:
        check_utf8("argument", a)


def _quiet_libraries() -> None:
    """depprune reports problems itself: no transformers warnings on stderr, no prompts on stdin."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # depprune's own progress bars say what is happening


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C, so every ``finally`` and cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _signals_as_interrupts:
    """Within the block, SIGINT and SIGTERM raise :class:`_Interrupted` (only in the main thread)."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Interrupted(signum)

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


def _discard_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
