"""The one configuration module: every option of a prune run, as pydantic models loadable from YAML or JSON.

The models nest by what they configure, each field declared once:

- :class:`PruneTarget` -- how much: ``ratio`` (a fraction of parameters) or ``kind_ratios``;
- :class:`PlannerConfig` -- and where: kinds, strategy, layers, minimum and rounding of units;
- :class:`CalibrationConfig` -- the calibration data of data-driven estimators;
- :class:`PruneConfig` -- a whole pruning (the planner's fields, the estimator and its options,
  the aggregation, the seed); what :func:`pruners.prune` takes;
- :class:`RunConfig` -- a ``depprune prune`` run: a PruneConfig plus the model, the output,
  the device and dtype and evaluation.

>>> cfg = RunConfig(model="m", out="o", ratio=0.3, importance="l1", layers=(4, -2))
>>> cfg.layers, cfg.calibration.samples
((4, -2), 10)
>>> RunConfig(model="m", out="o", kind_ratios={"attention": 0.25, "mlp_channel": 0.5}).kinds
['attention', 'mlp_channel']

A run file (``depprune prune --config run.yaml --ratio 0.3`` overrides its ratio)::

    model: ../shared/models/stories260K
    out: out/pruned
    ratio: 0.2
    importance: taylor-element
    importance_options: {}
    aggregation: sum
    kinds: [attention, mlp_channel]
    strategy: uniform
    layers: [1, -1]
    calibration: {source: ../shared/data/tinystories-train/tinystories-train.cased.txt, samples: 10, seq_len: 128}
    eval_text: ../shared/data/tinystories-valid/TinyStories-valid.first46.txt
    device: cpu
    dtype: bfloat16

Instead of ``ratio``, a file may give ``kind_ratios`` (then leave ``kinds`` out: its keys are the
planned kinds), the fraction of units removed from every planned group of each kind::

    kind_ratios: {attention: 0.25, mlp_channel: 0.5}

On the command line ``--kind-ratio KIND=FRACTION`` replaces the file's ``ratio`` (and ``kinds``,
unless ``--kinds`` is given too), and ``--ratio`` replaces its ``kind_ratios``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import first_line
from .io.text_input import MissingInputFileError, file_error, json_error, read_text

MAX_SEED = 2**32 - 1  # numpy and torch both take it; negative seeds are refused by numpy

# what --kinds accepts: the group kinds (depgraph.groups.KINDS) a plan may prune, and 'attention'
# (whole KV groups under GQA, heads otherwise)
KindName = Literal["attention", "attention_head", "kv_group", "query_head", "mlp_channel", "hidden_channel"]
KIND_NAMES: tuple[str, ...] = get_args(KindName)


LayerBound = int | float
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


def _fractions_in_range(bounds: tuple[LayerBound, LayerBound]) -> tuple[LayerBound, LayerBound]:
    for b in bounds:
        if isinstance(b, float) and not 0.0 <= b <= 1.0:
            raise ValueError(f"a fractional layer bound must be in [0, 1], got {b}")
    return bounds


LayerRange = Annotated[tuple[LayerBound, LayerBound], AfterValidator(_fractions_in_range)]


def check_kinds(kinds: Sequence[str]) -> list[str]:
    """``kinds`` without repeats; refuses none, and KV groups together with query heads.

    >>> check_kinds(["mlp_channel", "attention", "mlp_channel"])
    ['mlp_channel', 'attention']
    """
    if not kinds:
        raise ValueError("at least one kind is required")
    if "query_head" in kinds and ("kv_group" in kinds or "attention" in kinds):
        raise ValueError("prune either whole KV groups ('attention'/'kv_group') or query heads within them, not both")
    return list(dict.fromkeys(kinds))


class PruneTarget(BaseModel):
    """How much to prune: a fraction of parameters (``ratio``) or of units per kind (``kind_ratios``).

    Exactly one of the two is given.  With ``kind_ratios`` the planned kinds are its keys:

    >>> PruneTarget(kind_ratios={"attention": 0.25, "mlp_channel": 0.5}).kinds
    ['attention', 'mlp_channel']
    >>> PruneTarget(ratio=0.2).kinds
    ['attention', 'mlp_channel']
    """

    model_config = ConfigDict(extra="forbid")

    ratio: float | None = Field(
        None, gt=0.0, lt=1.0, description="fraction of the model's parameters to remove, in (0, 1); or give kind_ratios"
    )
    kind_ratios: dict[KindName, Fraction] | None = Field(
        None,
        description="instead of ratio: the fraction of units, in (0, 1), removed from every planned group of each "
        "kind, e.g. {attention: 0.25, mlp_channel: 0.5} (LLM-Pruner's per-layer ratio); its keys are the planned kinds",
    )
    kinds: list[KindName] = Field(
        default_factory=lambda: ["attention", "mlp_channel"],
        description="group kinds to prune; 'attention' means whole KV groups under GQA and heads otherwise",
    )

    @field_validator("kinds")
    @classmethod
    def _valid_kinds(cls, v: list[str]) -> list[str]:
        return check_kinds(v)

    @model_validator(mode="after")
    def _one_target(self):
        if (self.ratio is None) == (self.kind_ratios is None):
            raise ValueError(
                "give exactly one target: ratio (a fraction of parameters) or kind_ratios (a fraction of units per kind)"
            )
        if self.kind_ratios is not None:
            if not self.kind_ratios:
                raise ValueError("kind_ratios needs at least one kind: fraction")
            keys = check_kinds(list(self.kind_ratios))
            if "kinds" in self.model_fields_set and set(self.kinds) != set(keys):
                raise ValueError(
                    f"kinds {self.kinds} differ from the kind_ratios kinds {keys}; "
                    "with kind_ratios its keys are the planned kinds, so leave kinds out"
                )
            self.kinds = keys
        return self


class PlannerConfig(PruneTarget):
    """How much to prune and where."""

    strategy: Literal["uniform", "global"] = Field(
        "uniform",
        description="uniform: every planned group (of a kind) loses the same fraction of units; "
        "global: the lowest scores across layers go first (scores normalised by each group's mean)",
    )
    layers: LayerRange | None = Field(
        None,
        description="layers to prune, [start, end): integers are indices (negative counts from the end), "
        "floats in [0, 1] are fractions of the depth; LLM-Pruner's 'keep the first 4 and last 2' is [4, -2]",
    )
    min_units: int = Field(1, strict=True, ge=1, description="units every pruned group keeps at least")
    round_to: int = Field(1, strict=True, ge=1, description="round each group's kept units to a multiple of this (hardware-friendly)")
    align: int | None = Field(
        None,
        strict=True,
        ge=1,
        description="aligned mode: every layer keeps the same shape (the uniform strategy), MLP and hidden "
        "channels rounded to a multiple of this, head counts the model's config accepts, so the output loads "
        "without remote code on any engine; a plan whose sizes the config cannot express is refused",
    )

    @model_validator(mode="after")
    def _aligned(self):
        if self.align is not None:
            if self.strategy != "uniform":
                raise ValueError(f"align keeps every layer alike, which needs strategy 'uniform', not {self.strategy!r}")
            if self.round_to != 1:
                raise ValueError(f"align rounds the channels to multiples of {self.align} itself; leave round_to at 1")
        return self


class CalibrationConfig(BaseModel):
    """Where calibration text comes from and how much of it is used (drawn under the run's ``seed``)."""

    model_config = ConfigDict(extra="forbid")

    source: Path | None = Field(None, description="text file, or Alpaca-format .json/.jsonl file")
    samples: int = Field(10, strict=True, ge=1, description="number of calibration sequences")
    seq_len: int = Field(128, strict=True, ge=2, description="tokens per calibration sequence")
    activation_memory: float | Literal["auto"] = Field(
        "auto",
        description="memory a gradient estimator scored layer by layer (taylor-element, taylor-vector) may keep "
        "activations of the calibration forward pass in, as a multiple of the weight bytes, e.g. 0.5: the first "
        "decoder layers whose activations fit are differentiated from that pass, the others run forward once "
        "more (slower, no memory); 0: least memory; 'auto': up to the size of the pruned model a prune writes "
        "(its peak memory is not raised), 0 when it prunes in place or only scores",
    )

    @field_validator("activation_memory", mode="before")
    @classmethod
    def _auto_or_multiple(cls, v: object) -> float | str:
        """'auto', or a number >= 0 (a string of one too: a command-line value).

        >>> CalibrationConfig(activation_memory="0.5").activation_memory
        0.5
        """
        if v == "auto":
            return v
        try:
            x = float(v) if not isinstance(v, bool) else None
        except (TypeError, ValueError):
            x = None
        if x is None or not x >= 0:
            raise ValueError(f"activation_memory {v!r} must be 'auto' or a multiple of the weight bytes >= 0, e.g. 0.5")
        return x


class PruneConfig(PlannerConfig):
    """One structured pruning: the planner's target and placement, and how units are scored.

    >>> PruneConfig(ratio=0.2, importance="l2").kinds
    ['attention', 'mlp_channel']
    >>> PruneConfig(ratio=0.2, importance="l2", importance_options={"p": 3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for PruneConfig
      Value error, importance 'l2' takes no options; got 'p' [type=value_error, ...]
    ...
    """

    importance: str = Field("l2", description="registered importance estimator (see `depprune prune --help`)")
    importance_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the estimator, validated by its own config (CLI: --importance-option KEY=VALUE)",
    )
    aggregation: str = Field("sum", description="how member scores combine into one score per unit")
    seed: int = Field(0, strict=True, ge=0, le=MAX_SEED, description="seed for random importance and any sampling, in [0, 2**32 - 1]")
    rounds: int = Field(
        1, strict=True, ge=1, le=100,
        description="prune in this many rounds, re-scoring the pruned model between them (Torch-Pruning's "
        "iterative steps); each round keeps the same fraction of the parameters, together the ratio target",
    )
    allow_nonfinite: bool = Field(
        False, description="go on when weights, scores or the pruned model's logits hold NaN/Inf (default: refuse)"
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="calibration data for gradient/activation estimators"
    )

    @field_validator("importance", "aggregation")
    @classmethod
    def _registered(cls, v: str, info) -> str:
        from .importance import AGGREGATIONS, ESTIMATORS

        registry = ESTIMATORS if info.field_name == "importance" else AGGREGATIONS
        if v not in registry:
            raise ValueError(f"unknown {info.field_name} {v!r}; registered: {', '.join(sorted(registry))}")
        return v

    @model_validator(mode="after")
    def _rounds_need_a_ratio(self):
        if self.rounds > 1 and self.ratio is None:
            raise ValueError(f"rounds {self.rounds} splits a ratio target over rounds; give ratio, not kind_ratios")
        return self

    @model_validator(mode="after")
    def _options_fit_estimator(self):
        from .importance import validate_options

        self.importance_options = validate_options(self.importance, self.importance_options)
        return self


class RunConfig(PruneConfig):
    """Everything a ``depprune prune`` run needs: the model, the pruning, where it runs, evaluation and output."""

    method: str = Field(
        "one-shot", description="registered pruning method (pruners.methods): one-shot scores, plans and slices in one pass"
    )
    model: str = Field(..., description="model directory or hub id")
    out: str = Field(..., description="output directory (must be empty or absent unless force)")
    tokenizer: str | None = Field(None, description="tokenizer directory (default: the model's)")
    eval_text: str | None = Field(None, description="text file for perplexity before and after")
    force: bool = Field(False, description="replace an output directory depprune wrote before")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="dtype the model is loaded, pruned and saved in (default: the checkpoint's)"
    )
    recover: dict[str, Any] | None = Field(
        None,
        description="fine-tune the pruned model before saving it: the options of `depprune recover` (its "
        "recovery.RecoverConfig, e.g. {data: {source: train.txt}, method: lora}), validated by that command; "
        "CLI: --recover FILE sets data.source",
    )

    method_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the method, validated by the config it registered (e.g. compresso's data, "
        "train and prompt); the method's own flags (--data, --max-steps ...) set them on the command line",
    )

    @field_validator("method")
    @classmethod
    def _method_registered(cls, v: str) -> str:
        from .methods import check_method

        return check_method(v)

    @model_validator(mode="after")
    def _options_fit_method(self):
        from .methods import validate_method_options

        self.method_options = validate_method_options(self.method, self.method_options)
        return self


def read_run_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``) or JSON (``.json``) run file.

    Raises :class:`~pruners.errors.InputFileError` (a ValueError), one line naming the file, for
    a file that is missing (then also a FileNotFoundError), a directory, empty, binary or not
    UTF-8, has another suffix, does not parse, or does not hold a mapping.
    """
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
