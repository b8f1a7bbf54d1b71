"""Pruning methods: how a pruned model is made from a model and a :class:`~pruners.config.RunConfig`, by name.

``one-shot`` (built in, :func:`pruners.pipeline.prune`) scores, plans and slices in one pass.
Another method -- a training-based pruner that learns gates, say -- is a function with the same
signature, registered with :func:`register_method` together with the pydantic model of its own
options (``RunConfig.method_options``) and, optionally, its own ``depprune prune`` flags; a
package advertises the module that registers it under the ``depprune.methods`` entry-point
group, and ``depprune prune --method NAME`` runs it without depprune importing the package::

    [project.entry-points."depprune.methods"]
    learned = "my_pruner.method"

>>> "one-shot" in METHODS
True
>>> METHODS["one-shot"].options is None  # one-shot's options are the run config's own fields
True
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from .errors import UsageError
from .pipeline import prune

# run(model, config, progress=..., analysis=..., tokenizer=..., samples=..., prepared=...) -> PruneResult
RunMethod = Callable[..., object]
GROUP = "depprune.methods"


@dataclass(frozen=True)
class MethodFlag:
    """A ``depprune prune`` flag of one method: ``--data FILE`` sets ``method_options.data.source``.

    ``path`` is where the value goes in the method's options; ``kwargs`` are argparse's
    (``type``, ``metavar``, ``action``...).  The flag is refused with any other method.
    """

    flag: str
    path: tuple[str, ...]
    help: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    - ``run(model, config, *, progress, analysis, tokenizer, samples[, prepared])`` prunes a copy
      of ``model`` (never the model itself) and returns a :class:`~pruners.pipeline.PruneResult`;
      ``config`` is a :class:`~pruners.config.RunConfig` (or a PruneConfig with ``method_options``);
    - ``options``: the pydantic model of ``config.method_options`` (``None``: it takes none);
    - ``flags``: its own command-line flags (:class:`MethodFlag`);
    - ``check(config)``: refuses run options the method cannot honour and reads its input files
      (one-line :class:`~pruners.errors.DeppruneError`), before any model is loaded;
    - ``inputs(config)``: the files it reads (the output may not overlap them);
    - ``prepare(config, tokenizer)``: what needs only the tokenizer (tokenised training data),
      before the weights are loaded; passed to ``run`` as ``prepared``;
    - ``needs_tokenizer``: ``run`` (or ``prepare``) needs the tokenizer.
    """

    name: str
    run: RunMethod
    options: type | None = None
    flags: tuple[MethodFlag, ...] = ()
    check: Callable[[Any], None] | None = None
    inputs: Callable[[Any], list[str]] | None = None
    prepare: Callable[[Any, Any], Any] | None = None
    needs_tokenizer: bool = False


METHODS: dict[str, Method] = {}


def register_method(name: str, **spec: Any) -> Callable[[RunMethod], RunMethod]:
    """Register ``run`` as the pruning method ``name``; ``spec`` are the other fields of :class:`Method`.

    A flag another method has registered already is refused (both would appear in ``--help``).
    """

    def deco(fn: RunMethod) -> RunMethod:
        if name in METHODS:
            raise ValueError(f"pruning method {name!r} is already registered")
        method = Method(name, fn, **spec)
        taken = {f.flag: m.name for m in METHODS.values() for f in m.flags}
        for f in method.flags:
            if f.flag in taken:
                raise ValueError(f"method {name!r}: flag {f.flag} is already registered by method {taken[f.flag]!r}")
        METHODS[name] = method
        return fn

    return deco


register_method("one-shot")(prune)


def load_methods(group: str = GROUP) -> list[str]:
    """Import every module advertised under ``depprune.methods`` (their ``register_method`` calls run)."""
    loaded = []
    for ep in entry_points(group=group):
        ep.load()
        loaded.append(ep.name)
    return loaded


def check_method(name: str) -> str:
    """``name`` if it is a registered method; else a ValueError listing the registered ones."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return name


def validate_method_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked by the registered config of ``method``: the options given, validated, as JSON-able values.

    A one-line :class:`~pruners.errors.UsageError` names the bad key and value (or the method
    that takes no options).

    >>> validate_method_options("one-shot", {})
    {}
    >>> validate_method_options("one-shot", {"steps": 3})
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: method 'one-shot' takes no method_options; got 'steps'
    """
    from pydantic import ValidationError

    if not isinstance(options, Mapping):
        raise UsageError(f"method_options {reprlib.repr(options)} must be a mapping of the method's options")
    spec = METHODS[check_method(method)]
    if spec.options is None:
        if options:
            raise UsageError(f"method {method!r} takes no method_options; got {', '.join(repr(k) for k in options)}")
        return {}
    try:
        # the options given, checked (defaults left out, so that validating them again sees what was set)
        return spec.options.model_validate(dict(options)).model_dump(mode="json", exclude_unset=True)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        if err["type"] == "missing":  # name the flag that gives it, when the method has one
            flag = next((f for f in spec.flags if f.path[: len(err["loc"])] == tuple(err["loc"])), None)
            if flag is not None:
                raise UsageError(f"method {method!r} needs method_options.{'.'.join(flag.path)} ({flag.flag})") from e
            raise UsageError(f"method {method!r} needs method_options.{where}") from e
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
        value = f" {reprlib.repr(err['input'])}" if where and err["type"] != "missing" else ""
        raise UsageError(f"method {method!r}: method_options{'.' + where if where else ''}{value}: {msg}") from e


def method_options(config) -> Any:
    """``config.method_options`` as the pydantic model its method registered (``None`` for a method without options)."""
    spec = METHODS[config.method]
    return None if spec.options is None else spec.options.model_validate(config.method_options)
