"""One pydantic config for a whole ``depprune prune`` run, loadable from YAML or JSON.

>>> cfg = RunConfig(model="m", out="o", ratio=0.3, importance="l1", layers=(4, -2))
>>> cfg.planner().layers, cfg.calibration.samples
((4, -2), 10)

>>> RunConfig(model="m", out="o", kind_ratios={"attention": 0.25, "mlp_channel": 0.5}).kinds
['attention', 'mlp_channel']

A run file (``depprune prune --config run.yaml --ratio 0.3`` overrides its ratio)::

    model: ../shared/models/stories260K
    out: out/pruned
    ratio: 0.2
    importance: taylor-element
    aggregation: sum
    kinds: [attention, mlp_channel]
    strategy: uniform
    layers: [1, -1]
    calibration: {source: ../shared/data/tinystories-train/tinystories-train.cased.txt, samples: 10, seq_len: 128}
    eval_text: ../shared/data/tinystories-valid/TinyStories-valid.first46.txt

Instead of ``ratio``, a file may give ``kind_ratios`` (then leave ``kinds`` out: its keys are the
planned kinds), the fraction of units removed from every planned group of each kind::

    kind_ratios: {attention: 0.25, mlp_channel: 0.5}

On the command line ``--kind-ratio KIND=FRACTION`` replaces the file's ``ratio`` (and ``kinds``,
unless ``--kinds`` is given too), and ``--ratio`` replaces its ``kind_ratios``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from .pipeline import PruneConfig


class RunConfig(PruneConfig):
    """Everything a prune run needs: the model, the pruning config, evaluation and output."""

    model: str = Field(..., description="model directory or hub id")
    out: str = Field(..., description="output directory (must be empty or absent unless force)")
    tokenizer: str | None = Field(None, description="tokenizer directory (default: the model's)")
    eval_text: str | None = Field(None, description="text file for perplexity before and after")
    force: bool = Field(False, description="overwrite a non-empty output directory")


def read_run_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``) or JSON (``.json``) run file.

    Raises :class:`~pruners.errors.InputFileError` (a ValueError), one line naming the file, for
    a file that is missing (then also a FileNotFoundError), a directory, empty, binary or not
    UTF-8, has another suffix, does not parse, or does not hold a mapping.
    """
    from .errors import first_line
    from .text_input import MissingInputFileError, file_error, json_error, read_text

    path = Path(path)
    suffix = path.suffix.lower()
    expected = "a YAML or JSON mapping of options"
    if not path.exists():
        raise file_error(path, "run config", f"does not exist; expected a file of {expected}", MissingInputFileError)
    if suffix not in (".yaml", ".yml", ".json") and not path.is_dir():
        raise file_error(path, "run config", f"has suffix {path.suffix or '(none)'!r}; valid run files are .yaml, .yml or .json")
    text = read_text(path, "run config", expected)
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError (or a constructor's ValueError), json.JSONDecodeError, RecursionError
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
            first = f"{first_line(getattr(e, 'problem', None) or e)}{where}"
        elif isinstance(e, json.JSONDecodeError | RecursionError):
            first = json_error(e)
        else:
            first = first_line(e) or type(e).__name__
        raise file_error(path, "run config", f"does not parse: {first}") from e
    if not isinstance(data, dict):
        raise file_error(path, "run config", f"must hold a mapping of options, got {type(data).__name__}")
    return data
