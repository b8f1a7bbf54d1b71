"""The dependency graph: a ``networkx.DiGraph`` from tensor axes down to atomic factors.

Nodes
-----
``("param", name, axis)``, ``("buffer", name, axis)``, ``("tensor", fx_node, axis)``
    An axis of a parameter, buffer or traced activation (attributes ``size``, ``kind``).
``("factor", id)``
    An atomic index space (attributes ``size``, ``frozen``, ``origin``).  Axes that reach
    the same factor are coupled index for index.
``("prod", children)`` / ``("cat", children)``
    A composite layout shared by every axis with that structure.

Edges
-----
axis -> layout: ``map="identity"``.  ``prod`` -> child: ``map="split"`` (row-major
position ``order`` of ``sizes``, e.g. ``(heads, head_dim)``).  ``cat`` -> child:
``map="offset"`` with ``start`` and ``length`` (a fused projection's segments).  A child
that occurs several times (``gate_up = Cat(M, M)``) has one edge with one entry per
occurrence in its ``slots``; composite nodes list their children in order in ``children``.  A factor
with ``origin="expand"`` is the copy axis that repeats one KV head for several query heads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable

import networkx as nx
import numpy as np

from .layout import Factor, Prod, Term, resolve, size
from .tracer import Trace


def term_key(t: Term) -> Hashable:
    """The graph node of a resolved layout term (structurally hash-consed)."""
    if isinstance(t, Factor):
        return ("factor", t.id)
    kind = "prod" if isinstance(t, Prod) else "cat"
    return (kind, tuple(term_key(c) for c in t.children))


def add_term(G: nx.DiGraph, t: Term) -> Hashable:
    """Add a resolved term and its sub-terms to ``G``; return its node."""
    key = term_key(t)
    if key in G:
        return key
    if isinstance(t, Factor):
        G.add_node(key, kind="factor", size=t.size, frozen=t.frozen, origin=t.origin)
        return key
    children = [add_term(G, c) for c in t.children]
    G.add_node(key, kind=key[0], size=size(t), children=children)
    start = 0
    for i, (c, child) in enumerate(zip(t.children, children)):
        # a child may occur more than once (gate_up = Cat(M, M)): one edge, one slot per occurrence
        if isinstance(t, Prod):
            slot = {"order": i, "sizes": tuple(size(x) for x in t.children)}
            kind = "split"
        else:
            slot = {"order": i, "start": start, "length": size(c)}
            kind = "offset"
            start += size(c)
        if G.has_edge(key, child):
            G.edges[key, child]["slots"].append(slot)
        else:
            G.add_edge(key, child, map=kind, slots=[slot])
    return key


def add_axes(G: nx.DiGraph, kind: str, name: str, axes: Iterable[Term], shape: tuple[int, ...]) -> None:
    for k, (t, n) in enumerate(zip(axes, shape)):
        t = resolve(t)
        node = (kind, name, k)
        G.add_node(node, kind=kind, size=n, shape=tuple(shape), name=name, axis=k)
        if n > 1:
            G.add_edge(node, add_term(G, t), map="identity", order=0)


def build_graph(trace: Trace, activations: bool = True) -> nx.DiGraph:
    """Build the dependency graph of a :class:`~depgraph.tracer.Trace`."""
    G = nx.DiGraph()
    for name, info in trace.params.items():
        add_axes(G, "param", name, info.axes, info.shape)
    for name, info in trace.buffers.items():
        add_axes(G, "buffer", name, info.axes, info.shape)
    if activations:
        for node in trace.graph.nodes:
            info = node.meta.get("depgraph")
            if hasattr(info, "axes") and node.op == "call_function":
                add_axes(G, "tensor", node.name, info.axes, info.shape)
    return G


def positions(G: nx.DiGraph, node: Hashable) -> dict[Hashable, list[np.ndarray]]:
    """For each factor below ``node``: per occurrence, the factor index at every position (-1: absent).

    >>> G = nx.DiGraph()
    >>> G.add_node("h", kind="factor", size=2); G.add_node("d", kind="factor", size=3)
    >>> G.add_node("p", kind="prod", size=6, children=["h", "d"])
    >>> G.add_edge("p", "h"); G.add_edge("p", "d")
    >>> positions(G, "p")["h"][0].tolist()
    [0, 0, 0, 1, 1, 1]
    """
    attrs = G.nodes[node]
    if attrs["kind"] == "factor":
        return {node: [np.arange(attrs["size"])]}
    if attrs["kind"] in ("param", "buffer", "tensor"):
        succ = list(G.successors(node))
        return positions(G, succ[0]) if succ else {}
    children = attrs["children"]
    out: dict[Hashable, list[np.ndarray]] = defaultdict(list)
    sizes = [G.nodes[c]["size"] for c in children]
    if attrs["kind"] == "prod":
        for i, c in enumerate(children):
            before = int(np.prod(sizes[:i], dtype=np.int64))
            after = int(np.prod(sizes[i + 1 :], dtype=np.int64))
            for f, arrs in positions(G, c).items():
                out[f].extend(np.tile(np.repeat(a, after), before) for a in arrs)
        return dict(out)
    total, offset = sum(sizes), 0
    for c, n in zip(children, sizes):
        for f, arrs in positions(G, c).items():
            for a in arrs:
                full = np.full(total, -1, dtype=np.int64)
                full[offset : offset + n] = a
                out[f].append(full)
        offset += n
    return dict(out)


def axes_containing(G: nx.DiGraph, factor: Hashable, kinds: tuple[str, ...] = ("param", "buffer")) -> list:
    """Every axis node (of the given kinds) whose layout contains ``factor``."""
    return sorted(
        (n for n in nx.ancestors(G, factor) if G.nodes[n]["kind"] in kinds),
        key=lambda n: (n[0], n[1], n[2]),
    )
