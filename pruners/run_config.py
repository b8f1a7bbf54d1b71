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
    """The mapping in a YAML (``.yaml``/``.yml``) or JSON run file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run config {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"run config {str(path)!r} does not parse: {first}") from e
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004  (a bad file, reported like one that does not parse)
            f"run config {str(path)!r} must hold a mapping of options, got {type(data).__name__}"
        )
    return data
