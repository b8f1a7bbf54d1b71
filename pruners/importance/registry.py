"""Importance estimators and aggregations: small protocols, explicit registries.

An estimator scores every unit of a group, separately for each member (parameter axis):
``score(group, ctx) -> Tensor (n_members, n_units)``; a member it cannot score (no weights, no
calibration statistics for it) is a row of NaN.  An aggregation reduces the scored rows to one
score per unit (unscored rows are left out, so ``prod`` or ``mean`` of an activation criterion
that scores only the input-side member is that member's score).  Both are registered by name,
an estimator with its pydantic config::

    from pydantic import BaseModel, Field
    from pruners.importance import register_estimator

    class MyConfig(BaseModel):
        power: float = Field(2.0, description="exponent applied to |w|")

    @register_estimator("my-magnitude", config=MyConfig)
    class MyMagnitude:
        def __init__(self, config: MyConfig):
            self.config = config

        def score(self, group, ctx):
            return member_reduce(group, ctx, lambda w: w.abs().pow(self.config.power))

The config's fields are the estimator's **options**: :func:`validate_options` checks a mapping
of them (``PruneConfig.importance_options``, a run file's ``importance_options: {power: 2.5}``)
and :func:`parse_options` reads ``KEY=VALUE`` strings (``--importance-option power=2.5``).
"""

from __future__ import annotations

import json
import reprlib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from depgraph.groups import Group, Member

from ..errors import UsageError
from .signals import Signals


@dataclass
class ScoringContext:
    """What estimators may read: named parameters, calibration signals, a seeded generator."""

    generator: torch.Generator
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    signals: Signals = field(default_factory=Signals)

    @classmethod
    def for_model(cls, model: nn.Module, seed: int = 0, signals: Signals | None = None) -> ScoringContext:
        params = dict(model.named_parameters(remove_duplicate=False))  # tied weights under every name
        params.update(dict(model.named_buffers(remove_duplicate=False)))
        return cls(generator=torch.Generator().manual_seed(seed), params=params, signals=signals or Signals())

    def weight(self, group: Group, member: Member) -> torch.Tensor:
        """The detached tensor of ``member`` of ``group``.

        A member that is not a parameter or buffer of the model, or whose tensor holds no data
        (the meta device), is an error naming it: it must never become a silent "not scored".
        """
        w = self.params.get(member.param)
        where = f"member {member.param} of group {group.id}"
        if w is None:
            raise UsageError(
                f"{where} is not a parameter or buffer of the model being scored; "
                "score the model the groups were found on"
            )
        if w.device.type == "meta":
            raise UsageError(f"{where} has no weights (it is on the meta device); load the model's weights before scoring")
        return w.detach()


class Estimator(Protocol):
    """Scores units of a group.  ``needs`` names the calibration signals it reads
    (``"grad"``, ``"fisher"``, ``"activations"``); leave it empty for data-free estimators.

    An estimator may also set ``member_wise = True`` when each row of its scores depends on that
    member alone (its weight and signals), as every :func:`unit_sums` estimator's does: members
    may then be scored as their gradients complete, one decoder layer at a time, in one-member groups.
    """

    needs: frozenset[str]

    def score(self, group: Group, ctx: ScoringContext) -> torch.Tensor:
        """Per-member, per-unit scores: shape ``(n_members, n_units)``; higher means keep; NaN rows: not scored."""
        ...


def needs_of(estimator) -> frozenset[str]:
    return frozenset(getattr(estimator, "needs", ()))


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: its class (called with a config instance) and its config class."""

    factory: Callable[[BaseModel], Estimator]
    config: type[BaseModel]


ESTIMATORS: dict[str, EstimatorSpec] = {}
AGGREGATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def register_estimator(name: str, config: type[BaseModel]):
    """Register an estimator class (constructed with its config) under ``name``."""

    def deco(cls):
        if name in ESTIMATORS:
            raise ValueError(f"estimator {name!r} is already registered")
        ESTIMATORS[name] = EstimatorSpec(cls, config)
        return cls

    return deco


def register_aggregation(name: str):
    """Register ``fn(scores (n_members, n_units)) -> (n_units,)`` under ``name``."""

    def deco(fn):
        if name in AGGREGATIONS:
            raise ValueError(f"aggregation {name!r} is already registered")
        AGGREGATIONS[name] = fn
        return fn

    return deco


def load_plugins(group: str = "depprune.estimators") -> list[str]:
    """Import every installed plugin module advertised under the ``depprune.estimators`` entry point.

    A plugin package declares ``[project.entry-points."depprune.estimators"] my = "my_pkg.estimators"``;
    importing the module runs its ``register_estimator`` / ``register_aggregation`` calls.
    """
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        ep.load()
        loaded.append(ep.name)
    return loaded


def make_estimator(name: str, **options) -> Estimator:
    """Build a registered estimator; unknown names and bad options fail with the valid choices.

    ``options`` are checked by :func:`validate_options` (a :class:`~pruners.errors.UsageError`).
    """
    if name not in ESTIMATORS:
        raise UsageError(f"unknown importance {name!r}; registered: {', '.join(sorted(ESTIMATORS))}")
    spec = ESTIMATORS[name]
    return spec.factory(spec.config(**validate_options(name, options)))


def estimator_name(estimator: Estimator) -> str:
    """The registered name of ``estimator``'s class (its class name if it was never registered)."""
    names = [n for n, spec in ESTIMATORS.items() if spec.factory is type(estimator)]
    return names[0] if names else type(estimator).__name__


# -- estimator options ----------------------------------------------------------------------


def parse_option(text: str) -> tuple[str, Any]:
    """One ``--importance-option KEY=VALUE``: the key and the value, which stays a string.

    The estimator's config coerces the string to its field's type (:func:`validate_options`):
    ``2.5`` for a float, ``3`` for an int, ``true``/``false`` (or ``yes``/``no``, ``1``/``0``)
    for a bool, a choice's name for a ``Literal``.  A value that starts with ``[`` or ``{`` is
    JSON, for a list or mapping field.  Everything after the first ``=`` is the value.

    >>> parse_option("power=2.5")
    ('power', '2.5')
    >>> parse_option("layers=[1, 2]")
    ('layers', [1, 2])
    >>> parse_option("power")
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: --importance-option 'power' is not KEY=VALUE, e.g. power=2.5
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--importance-option {text!r} is not KEY=VALUE, e.g. power=2.5")
    if value[:1] in ("[", "{"):
        try:
            return key, json.loads(value)
        except json.JSONDecodeError as e:
            raise UsageError(
                f"--importance-option {key}={reprlib.repr(value)} starts like JSON but does not parse: "
                f"{e.msg} at column {e.colno}"
            ) from e
    return key, value


def parse_options(texts: Iterable[str]) -> dict[str, Any]:
    """Repeated ``--importance-option KEY=VALUE`` strings as one mapping; a key given twice is an error.

    >>> parse_options(["power=2.5", "scale=1"])
    {'power': '2.5', 'scale': '1'}
    """
    out: dict[str, Any] = {}
    for text in texts:
        key, value = parse_option(text)
        if key in out:
            raise UsageError(f"--importance-option {key} is given twice ({reprlib.repr(out[key])} and {reprlib.repr(value)})")
        out[key] = value
    return out


def validate_options(importance: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against the config of the registered estimator ``importance``.

    Returns the given keys with their values as the config holds them (``"2.5"`` becomes
    ``2.5``), ready for ``make_estimator(importance, **options)``.  Values may be strings from
    the command line (see :func:`parse_option`); a boolean is accepted only by a field that
    takes booleans (a run file's ``power: true`` is a mistake, not ``1.0``).  Raises a one-line
    :class:`~pruners.errors.UsageError` for an unknown key (listing the valid ones), a bad or
    missing value (naming the key, the value and the expected type), or any option for an
    estimator that takes none.

    >>> validate_options("l2", {})
    {}
    >>> validate_options("l2", {"power": "2"})
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: importance 'l2' takes no options; got 'power'
    """
    spec = ESTIMATORS[importance]
    fields = spec.config.model_fields
    if not isinstance(options, Mapping):
        raise UsageError(f"importance_options {reprlib.repr(options)} must be a mapping of option names to values, e.g. {{power: 2.5}}")
    if options and not fields:
        raise UsageError(f"importance {importance!r} takes no options; got {', '.join(repr(k) for k in options)}")
    for key, value in options.items():
        if key not in fields:
            valid = ", ".join(f"{k} ({f.description})" if f.description else k for k, f in fields.items())
            raise UsageError(f"unknown option {key!r} for importance {importance!r}; valid: {valid}")
        if isinstance(value, bool) and not _takes_bool(fields[key].annotation):
            raise UsageError(_bad_value(importance, key, value, fields[key].annotation, "a boolean is not one"))
    try:
        config = spec.config.model_validate(dict(options))
    except ValidationError as e:
        err = e.errors()[0]
        key = err["loc"][0] if err["loc"] else None
        if key not in fields:  # a check across fields of the config
            raise UsageError(f"importance {importance!r} options {reprlib.repr(dict(options))}: {err['msg']}") from e
        if err["type"] == "missing":
            raise UsageError(
                f"importance {importance!r} needs option {key!r} ({fields[key].description or _type_name(fields[key].annotation)}); "
                f"pass --importance-option {key}=VALUE"
            ) from e
        raise UsageError(_bad_value(importance, key, options[key], fields[key].annotation, err["msg"])) from e
    return config.model_dump(include=set(options))


def _bad_value(importance: str, key: str, value: Any, annotation: Any, why: str) -> str:
    return f"option {key}={reprlib.repr(value)} for importance {importance!r}: expected {_type_name(annotation)} ({why[:1].lower()}{why[1:]})"


def _type_name(annotation: Any) -> str:
    """``float``, ``int | None``, ``Literal['a', 'b']``: a field's type as a user reads it."""
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _takes_bool(annotation: Any) -> bool:
    """Does a field of this type accept a boolean as one (``bool``, ``bool | None``, ``Any``)?"""
    if annotation is bool or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_bool(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    return False


# -- aggregation ----------------------------------------------------------------------------


def aggregate(name: str, scores: torch.Tensor, group: str | None = None, importance: str | None = None) -> torch.Tensor:
    """Reduce member rows ``(n_members, n_units)`` to ``(n_units,)`` with the registered ``name``.

    Unscored (all-NaN) rows are left out.  A group with no scored row at all is a
    :class:`~pruners.errors.UsageError` naming ``group`` and ``importance``: a plan from no
    scores would be decided by unit index, not importance.

    >>> nan = float("nan")
    >>> aggregate("prod", torch.tensor([[nan, nan], [2.0, 3.0], [4.0, 1.0]], dtype=torch.float64))
    tensor([8., 3.], dtype=torch.float64)
    >>> aggregate("sum", torch.full((2, 3), nan), group="mlp_channel@0", importance="wanda-sp")
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: importance 'wanda-sp' scores none of the 2 members of group mlp_channel@0 (it does not apply to them, or has no calibration signals for them); choose another --importance for this kind, e.g. l2
    """
    if name not in AGGREGATIONS:
        raise KeyError(f"unknown aggregation {name!r}; registered: {', '.join(sorted(AGGREGATIONS))}")
    scored = scores[~torch.isnan(scores).all(dim=1)]
    if not len(scored):
        who = f"importance {importance!r}" if importance else "the estimator"
        raise UsageError(
            f"{who} scores none of the {scores.shape[0]} members of group {group or '(unnamed)'} (it does not apply to them, "
            "or has no calibration signals for them); choose another --importance for this kind, e.g. l2"
        )
    return AGGREGATIONS[name](scored)


def member_reduce(group: Group, ctx: ScoringContext, elementwise: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum ``elementwise(W)`` over each unit's slice of each member: ``(n_members, n_units)``.

    ``elementwise`` must act on each element alone (``torch.square``, ``abs().pow(p)``): it is
    applied to blocks of ``W`` as they are summed, so it never holds a weight-sized temporary.
    Every member is scored; one without weights is an error (see :meth:`ScoringContext.weight`).
    """
    return unit_sums(group, ctx, lambda name, axis, w: w, blockwise=elementwise)


def unit_sums(
    group: Group,
    ctx: ScoringContext,
    values: Callable[[str, int, torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...] | None],
    post: Callable[[torch.Tensor], torch.Tensor] | None = None,
    blockwise: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum ``values(name, axis, W)`` over each unit's slice of each member, then apply ``post``.

    ``W`` is passed in at least fp32 (fp32 and fp64 weights as they are, without a copy;
    half-precision ones upcast to fp32).  ``values`` returns a tensor shaped like ``W`` in
    that precision, or ``None`` when the estimator does not apply to the member (e.g. an
    activation criterion and a member whose pruned axis is not an input axis): that row is
    NaN, and aggregation leaves it out.  ``blockwise``, an elementwise function, is applied to
    each block of the values just before it is summed; ``values`` may then return a tuple of
    tensors shaped like ``W`` (e.g. the weight and its gradient), and ``blockwise`` gets their
    blocks as its arguments (``lambda w, g: (w * g).abs_()``).  Each position's sum is taken in
    blocks in the values' precision and accumulated in fp64, as are the units'
    (:func:`_sum_except`).  A member without weights (not in the model, or on the meta device)
    raises, naming it.

    Memory: a member costs ``values``' own temporaries (about one weight-sized tensor when
    it works in place; none when it returns ``W``, or ``W`` and a signal, and ``blockwise`` does
    the work) plus one block and one vector per position, never an upcast copy of the weight.
    """
    rows = []
    for m in group.members:
        w = ctx.weight(group, m)
        row = torch.full((group.n_units,), torch.nan, dtype=torch.float64)
        vals = values(m.param, m.axis, w if w.dtype in (torch.float32, torch.float64) else w.float())
        if vals is not None:
            row.zero_()
            per_pos = _sum_except(vals, m.axis, blockwise).to(row.device)  # (axis size,) fp64, to the scores' device
            del vals
            unit_of = torch.as_tensor(m.unit_of)
            sel = unit_of >= 0
            row.index_add_(0, unit_of[sel], per_pos[sel.nonzero().squeeze(1)])
            if post is not None:
                row = post(row)
        rows.append(row)
    return torch.stack(rows)


_BLOCK = 1024  # slices of the longest summed dim added up together in the weight's precision (see _sum_except)


def _sum_except(
    vals: torch.Tensor | tuple[torch.Tensor, ...], axis: int, blockwise: Callable[..., torch.Tensor] | None = None
) -> torch.Tensor:
    """Sum of ``blockwise(*vals)`` (``vals`` when ``None``) over every dim but ``axis``, as fp64.

    ``vals`` is one tensor or, with ``blockwise``, a tuple of tensors of one shape, cut into the
    same blocks.  Blocks of at most :data:`_BLOCK` slices along the longest summed dim are
    summed in their own precision (torch sums pairwise: relative error about ``log2(n)`` ulps,
    the same order as the rounding of the elementwise values themselves), and the blocks in
    fp64.  No upcast copy and no elementwise result the size of ``vals`` is made, and it runs at
    the speed of an fp32 sum (fp64 accumulation over whole weights costs ten times as much).

    >>> v = torch.ones(3, 2500)
    >>> _sum_except(v, 0)
    tensor([2500., 2500., 2500.], dtype=torch.float64)
    >>> _sum_except(v, 1).shape
    torch.Size([2500])
    >>> _sum_except(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), 0, torch.square)
    tensor([ 5., 25.], dtype=torch.float64)
    >>> _sum_except((torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 4.0]])), 0, lambda w, g: (w * g).abs_())
    tensor([11.], dtype=torch.float64)
    """
    parts = vals if isinstance(vals, tuple) else (vals,)
    if len(parts) > 1 and (blockwise is None or any(p.shape != parts[0].shape for p in parts)):
        raise ValueError(f"values as a tuple need a blockwise function and one shape; got shapes {[tuple(p.shape) for p in parts]}")
    first = parts[0]
    dims = [d for d in range(first.ndim) if d != axis]
    if not dims or first.numel() == 0:
        whole = blockwise(*parts) if blockwise is not None else first
        return whole.sum(dim=dims, dtype=torch.float64) if dims else whole.to(torch.float64)
    longest = max(dims, key=lambda d: first.shape[d])
    out = torch.zeros(first.shape[axis], dtype=torch.float64, device=first.device)
    for blocks in zip(*(p.split(_BLOCK, dim=longest) for p in parts)):
        block = blocks[0] if blockwise is None else blockwise(*blocks)  # a block's temporary, not a weight's
        out += block.sum(dim=dims)  # (axis size,) in the block's precision, accumulated in fp64
    return out


@register_aggregation("sum")
def _sum(s: torch.Tensor) -> torch.Tensor:
    return s.sum(0)


@register_aggregation("mean")
def _mean(s: torch.Tensor) -> torch.Tensor:
    return s.mean(0)


@register_aggregation("max")
def _max(s: torch.Tensor) -> torch.Tensor:
    return s.max(0).values


@register_aggregation("prod")
def _prod(s: torch.Tensor) -> torch.Tensor:
    return s.prod(0)


@register_aggregation("last")
def _last(s: torch.Tensor) -> torch.Tensor:
    """The last member's row (members are ordered by execution: e.g. ``down_proj`` for an MLP channel)."""
    return s[-1]


def unit_scores(group: Group, estimator: Estimator, ctx: ScoringContext, aggregation: str = "sum") -> np.ndarray:
    """One score per unit of ``group``: ``aggregation`` over the members the estimator scored."""
    return aggregate(aggregation, estimator.score(group, ctx), group.id, estimator_name(estimator)).numpy()
