"""The handler registry: one function per ATen op family.

A handler receives the tracer (for fresh factors, unification and annotations), the fx
node, and the node's arguments with every tensor replaced by its :class:`TensorInfo`.
It returns the abstract value of the node's result: a :class:`TensorInfo`, a tuple of
them, or a plain Python value.

>>> import torch
>>> @register("aten.my_identity")
... def _identity(tr, node, x, *args, **kwargs):
...     return x
>>> lookup(torch.ops.aten.neg.default) is not None
True
>>> del HANDLERS["aten.my_identity"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..layout import Term

Handler = Callable[..., Any]
HANDLERS: dict[str, Handler] = {}


class UnsupportedOpError(NotImplementedError):
    """An op in the traced graph has no handler, or one whose shapes its handler does not understand.

    Nothing about such an op is guessed; the message names the op, the fx node and its module.
    """


def module_path(node: Any) -> str:
    """The owning module path of an fx node, from ``nn_module_stack`` (``"<root>"`` for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<root>"
    path = list(stack.values())[-1][0]
    return path.replace("L['self'].", "").replace("L__self___", "") or "<root>"


def unsupported(node: Any, what: str) -> UnsupportedOpError:
    """The error a handler raises for a shape or argument it does not understand (``what``).

    >>> import torch
    >>> g = torch.fx.Graph()
    >>> x = g.placeholder("x")
    >>> node = g.call_function(torch.ops.aten.neg.default, (x,))
    >>> print(unsupported(node, "a 5-D input"))
    depgraph cannot handle aten.neg.default at node %neg_default : [num_users=0] = call_function[target=torch.ops.aten.neg.default](args = (%x,), kwargs = {}) in module '<root>': a 5-D input
    """
    return UnsupportedOpError(
        f"depgraph cannot handle {op_key(node.target)} at node {node.format_node()} in module {module_path(node)!r}: {what}"
    )


@dataclass(frozen=True)
class TensorInfo:
    """Abstract value of a tensor: its shape and the layout term of every axis."""

    shape: tuple[int, ...]
    axes: tuple[Term, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


def op_key(target: Any) -> str:
    """Stable key of an fx call target: ``aten.add.Tensor`` or ``getitem``."""
    name = getattr(target, "_name", None)  # OpOverload: "aten::add.Tensor"
    if isinstance(name, str) and "::" in name:
        ns, rest = name.split("::", 1)
        overload = getattr(target, "_overloadname", "default") or "default"
        base = rest.split(".")[0]
        return f"{ns}.{base}.{overload}"
    return getattr(target, "__name__", str(target))


def register(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler for op families (``"aten.add"``) or exact overloads (``"aten.add.Tensor"``)."""

    def deco(fn: Handler) -> Handler:
        for n in names:
            if n in HANDLERS:
                raise ValueError(f"a handler for {n!r} is already registered ({HANDLERS[n].__qualname__})")
            HANDLERS[n] = fn
        return fn

    return deco


def lookup(target: Any) -> Handler | None:
    """The handler for an fx call target: exact overload first, then the op family."""
    key = op_key(target)
    if key in HANDLERS:
        return HANDLERS[key]
    family = key.rsplit(".", 1)[0] if key.count(".") >= 2 else key
    return HANDLERS.get(family)


def bind(node: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Arguments by schema name (``{"self": x, "dim": [-1], "keepdim": True}``), defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        raise unsupported(node, "the op has no schema to bind its arguments against")
    out: dict[str, Any] = {}
    for i, a in enumerate(schema.arguments):
        if i < len(args):
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
        else:
            out[a.name] = None
    return out
