"""Trace a causal LM into layout terms: ``torch.export`` on the meta device, then an Interpreter.

The exported program (non-strict, ``use_cache=False``) is walked node by node; each ATen
op is dispatched to its handler in :mod:`depgraph.ops`, which unifies the layout terms of
its inputs and outputs.  The result, a :class:`Trace`, maps every parameter axis to a
layout term whose factors are the coupled index spaces of the model.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.export.graph_signature import InputKind
from torch.fx.node import map_aggregate

from . import ops  # noqa: F401  (importing registers every op handler)
from .layout import ONE, Factor, LayoutConflict, Term, cut, resolve, unify
from .ops.registry import TensorInfo, UnsupportedOpError, lookup, module_path, op_key, unsupported
from .repeats import layer_signatures, layer_stack, replicate, traced_prefix, truncated

# what a handler raises when it indexes, unpacks or binds arguments of a shape it does not expect
_HANDLER_FAULTS = (IndexError, KeyError, AssertionError, ValueError, TypeError, AttributeError)


class TraceError(RuntimeError):
    """``torch.export`` could not trace the model."""


@dataclass
class Trace:
    """What tracing found: layout terms per parameter/buffer axis plus op-level annotations.

    ``sites`` maps an annotation kind to one dict per op: ``linear`` (``inp``/``out`` terms of a
    weight applied to the last axis: ``aten.linear``, ``mm``, ``addmm``, ``x @ W``),
    ``contraction`` (batched products: ``batch``, ``contracted``, ``free`` terms), ``embedding``
    (table ``rows`` and features ``out``; ``by_tokens`` when the indices are computed from the token
    ids), ``normalized`` (axes a mean, variance, max or softmax runs over) and ``output`` (the last
    axis ``out`` of each user output: the logits).
    """

    params: dict[str, TensorInfo]
    buffers: dict[str, TensorInfo]
    aliases: dict[str, list[str]]  # canonical parameter name -> all names sharing it (tied)
    sites: dict[str, list[dict]]
    data_terms: list[Term]
    conflicts: list[str]
    graph: torch.fx.Graph
    num_nodes: int
    order: dict[str, int] = field(default_factory=dict)  # parameter/buffer -> rank of its first use
    # untraced layer -> the traced layer whose layouts it copies (see depgraph.repeats); empty: all traced
    replicated: dict[str, str] = field(default_factory=dict)


@dataclass
class Tracer:
    """Interpreter state: abstract values per node, annotations recorded by handlers."""

    sites: dict[str, list[dict]] = field(default_factory=dict)
    data_terms: list[Term] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    current: torch.fx.Node | None = None
    num_nodes: int = 0

    # -- helpers for handlers -------------------------------------------------------------
    def axis(self, n: int, origin: str = "") -> Term:
        """A fresh free layout for an axis of size ``n`` (``ONE`` for size 1)."""
        return ONE if n == 1 else Factor(n, origin)

    def fresh(self, shape, origin: str = "") -> TensorInfo:
        shape = tuple(int(s) for s in shape)
        return TensorInfo(shape, tuple(self.axis(s, origin) for s in shape))

    def unify(self, a: Term, b: Term) -> None:
        """Unify two axis layouts; an irreconcilable pair is frozen and recorded, not guessed."""
        try:
            unify(a, b)
        except LayoutConflict as e:
            self.conflicts.append(f"{self._where()}: {e}")

    def cut(self, t: Term, start: int, stop: int) -> Term:
        try:
            return cut(t, start, stop)
        except LayoutConflict as e:
            self.conflicts.append(f"{self._where()}: {e}")
            f = Factor(stop - start, "conflict")
            f.frozen = True
            return f

    def annotate(self, kind: str, **info: Any) -> None:
        info["node"] = self.current.name if self.current is not None else None
        info["module"] = module_path(self.current) if self.current is not None else None
        self.sites.setdefault(kind, []).append(info)

    def broadcast(self, infos: list[TensorInfo], shape) -> tuple[Term, ...]:
        """Right-aligned broadcasting: aligned axes of equal (non-1) size are one index space."""
        shape = tuple(int(s) for s in shape)
        out = []
        for j in range(1, len(shape) + 1):
            n = shape[-j]
            terms = [i.axes[-j] for i in infos if i.ndim >= j and i.shape[-j] == n and n != 1]
            if n == 1:
                out.append(ONE)
            elif not terms:
                out.append(Factor(n, "broadcast"))
            else:
                for t in terms[1:]:
                    self.unify(terms[0], t)
                out.append(terms[0])
        return tuple(reversed(out))

    def out_shape(self, node: torch.fx.Node, index: int | None = None) -> tuple[int, ...]:
        val = node.meta.get("val")
        if index is not None:
            val = val[index]
        return tuple(int(s) for s in val.shape)

    def _where(self) -> str:
        n = self.current
        return "<no node>" if n is None else f"{n.name} ({op_key(n.target)}) in {module_path(n)}"

    # -- the interpreter --------------------------------------------------------------------
    def run_graph(self, graph: torch.fx.Graph, inputs: list[Any], owner: torch.fx.GraphModule | None = None) -> Any:
        """Interpret ``graph`` with abstract ``inputs`` bound to its placeholders, in order."""
        env: dict[torch.fx.Node, Any] = {}
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        for n, v in zip(placeholders, inputs):
            env[n] = v
        for node in graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                return map_aggregate(node.args[0], lambda a: env.get(a) if isinstance(a, torch.fx.Node) else a)
            if node.op == "get_attr":
                env[node] = getattr(owner, node.target) if owner is not None else None
                continue
            self.num_nodes += 1
            self.current = node
            args = map_aggregate(node.args, lambda a: env[a] if isinstance(a, torch.fx.Node) else a)
            kwargs = map_aggregate(node.kwargs, lambda a: env[a] if isinstance(a, torch.fx.Node) else a)
            handler = lookup(node.target)
            if handler is None:
                raise UnsupportedOpError(
                    f"no depgraph handler for op {op_key(node.target)!r} at node {node.format_node()} "
                    f"in module {module_path(node)!r}; register one with depgraph.ops.register"
                )
            try:
                env[node] = handler(self, node, *args, **kwargs)
            except _HANDLER_FAULTS as e:  # a shape the handler does not understand: name the node
                raise unsupported(node, f"its handler failed with {type(e).__name__}: {e}") from e
            node.meta["depgraph"] = env[node]  # results live on the graph nodes
        return None


def example_inputs(model: nn.Module, batch: int = 2, seq: int = 7, device: Any = "meta") -> tuple[tuple, dict]:
    """Positional and keyword arguments for tracing: token ids, plus ``use_cache=False`` when accepted."""
    ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
    params = inspect.signature(model.forward).parameters
    kwargs: dict[str, Any] = {}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    if "input_ids" in params:
        kwargs["input_ids"] = ids
        return (), kwargs
    return (ids,), kwargs


def export(model: nn.Module, batch: int = 2, seq: int = 7) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) of ``model`` on its own device; meta models cost no memory."""
    device = next(iter(model.parameters())).device
    args, kwargs = example_inputs(model, batch, seq, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(model, args, kwargs, strict=False)
    except Exception as e:  # torch.export raises many exception types
        raise TraceError(f"torch.export failed on {type(model).__name__}: {type(e).__name__}: {e}") from e
    finally:
        model.train(was_training)


def trace(model: nn.Module, batch: int = 2, seq: int = 7, repeats: bool = True) -> Trace:
    """Trace ``model`` and return the layout terms of every parameter and buffer axis.

    ``model`` is not modified.  Build it under ``torch.device("meta")`` to trace a model of
    any size without materialising weights.  With ``repeats`` (the default) a stack of identical
    decoder layers is exported only as far as its first two copies of each distinct layer and
    the rest replicated (:mod:`depgraph.repeats`; ``Trace.replicated`` lists the copied layers);
    the result is the same as tracing every layer, which ``repeats=False`` does.
    """
    found = layer_stack(model) if repeats else None
    if found is not None:
        path, layers = found
        tied = [n for names in tied_aliases(model).values() if len(names) > 1 for n in names]
        shared = any(n.startswith(f"{path}.") for n in tied)  # layers sharing weights are not copies
        signatures = layer_signatures(layers)
        k = traced_prefix(signatures)
        if not shared and k < len(layers):
            replicated = replicate(trace_all(truncated(model, path, k), batch, seq), f"{path}.", signatures, k)
            if replicated is not None:
                return replicated
    return trace_all(model, batch, seq)


def trace_all(model: nn.Module, batch: int = 2, seq: int = 7) -> Trace:
    """Trace every op of ``model`` (:func:`trace` without replicating repeated layers)."""
    ep = export(model, batch, seq)
    tracer = Tracer()
    inputs = []
    params: dict[str, TensorInfo] = {}
    buffers: dict[str, TensorInfo] = {}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    for node, spec in zip(placeholders, ep.graph_signature.input_specs):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            inputs.append(val)
            continue
        if spec.kind == InputKind.USER_INPUT:
            info = tracer.fresh(val.shape, "data")
            tracer.data_terms.extend(info.axes)
        else:
            info = tracer.fresh(val.shape, spec.kind.name.lower())
        if spec.kind == InputKind.PARAMETER:
            params[spec.target] = info
        elif spec.kind == InputKind.BUFFER:
            buffers[spec.target] = info
        inputs.append(info)
    outputs = tracer.run_graph(ep.graph, inputs, ep.graph_module)
    annotate_token_lookups(tracer.sites, ep)
    for info in outputs if isinstance(outputs, (tuple, list)) else [outputs]:
        if isinstance(info, TensorInfo) and info.ndim:
            tracer.sites.setdefault("output", []).append({"out": info.axes[-1], "node": None, "module": None})
    fqn = {n.name: spec.target for n, spec in zip(placeholders, ep.graph_signature.input_specs) if spec.target}
    order: dict[str, int] = {}
    for node in ep.graph.nodes:  # execution order: the rank at which each weight is first read
        for arg in node.all_input_nodes:
            if arg.name in fqn and fqn[arg.name] not in order:
                order[fqn[arg.name]] = len(order)
    aliases = tied_aliases(model)
    for canonical, names in aliases.items():
        present = [n for n in names if n in params]
        for name in present[1:]:  # tied weights are lifted once per name: one index space
            for a, b in zip(params[present[0]].axes, params[name].axes):
                tracer.unify(a, b)
        if present:
            info = params[present[0]]
            for name in present:
                del params[name]
            params[canonical] = info
            order[canonical] = min(order.get(n, len(order)) for n in present)
    return Trace(
        params=params,
        buffers=buffers,
        aliases={k: v for k, v in aliases.items() if len(v) > 1},
        sites=tracer.sites,
        data_terms=tracer.data_terms,
        conflicts=tracer.conflicts,
        graph=ep.graph,
        num_nodes=tracer.num_nodes,
        order=order,
    )


def token_dependent(ep: torch.export.ExportedProgram) -> set[str]:
    """Names of the fx nodes whose value is computed from the user inputs (the token ids)."""
    specs = ep.graph_signature.input_specs
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    out = {n.name for n, spec in zip(placeholders, specs) if spec.kind == InputKind.USER_INPUT}
    for node in ep.graph.nodes:
        if node.op != "placeholder" and any(a.name in out for a in node.all_input_nodes):
            out.add(node.name)
    return out


def annotate_token_lookups(sites: dict[str, list[dict]], ep: torch.export.ExportedProgram) -> None:
    """Mark each ``embedding`` site ``by_tokens``: are its indices computed from the token ids?

    A table looked up by the token ids holds vocabulary rows; one looked up by indices computed
    without them (``arange`` positions, the attention mask) holds position rows.
    """
    dependent = token_dependent(ep)
    for site in sites.get("embedding", []):
        site["by_tokens"] = site.get("indices") in dependent


def tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Canonical name (first in ``named_parameters``) -> every name of the same Parameter."""
    seen: dict[int, str] = {}
    out: dict[str, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canon = seen.setdefault(id(p), name)
        out.setdefault(canon, []).append(name)
    return out


def meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` with every parameter and buffer on the meta device."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


__all__ = ["Trace", "Tracer", "TraceError", "UnsupportedOpError", "export", "trace", "meta_copy", "resolve"]
