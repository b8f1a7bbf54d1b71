"""Group finding (LLM-Pruner's *Discovery*): from a trigger factor to every coupled parameter slice.

A :class:`Group` is a set of prunable *units* -- attention heads, KV groups, MLP channels,
hidden channels -- and its :class:`Member` s, the parameter axes that lose slices when a unit
is removed.  Groups are found from the dependency graph alone; the only inputs besides it are
the op-level annotations recorded while tracing (which factors are contracted per attention
head, which are embedding features).  No parameter names are consulted except to tell which
layer a group belongs to.

Kinds
-----
:data:`KINDS` lists every kind a group can have, in the order groups of one layer are listed:

``attention_head``  a head of multi-head attention: its q/k/v slices and its o columns.  With one
                    KV head shared by every query head (multi-query attention) a query head: its q
                    slices and o columns (the shared k/v rows stay).
``kv_group``        a KV head with all query heads reading it (GQA).
``query_head``      one query head inside a KV group; pruned in equal numbers per group.
``mlp_channel``     a channel produced by one linear map and consumed by another within one layer
                    (gate/up/down, fc1/fc2), with every parameter applied element-wise on the way
                    (biases, a per-channel activation parameter such as ``nn.PReLU(C)``'s weight).
``hidden_channel``  a channel of the residual stream: embeddings, every norm, every projection.
``vocab``           a vocabulary row: of the embedding table the token ids look up, and of the LM
                    head (the last axis of the logits).
``position``        a row of a learned position embedding: a table looked up by indices that are
                    not computed from the token ids (``arange`` positions, the attention mask).
``unplaced``        a prunable factor that none of the rules above places, e.g. a channel between
                    linear maps of *different* layers.  Listed (by ``depprune inspect``), never pruned.

The kinds a user may plan (``--kinds``) are the selectors in ``pruners.planner.KIND_NAMES``:
the per-layer kinds and ``hidden_channel``, plus ``attention`` (KV groups, else heads).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .graph import axes_containing, build_graph, positions, term_key
from .layout import Cat, Factor, factors, resolve
from .tracer import Trace

KINDS = (
    "attention_head", "kv_group", "query_head", "mlp_channel", "hidden_channel", "vocab", "position", "unplaced",
)


@dataclass(frozen=True)
class Member:
    """One parameter axis of a group: ``unit_of[p]`` is the unit owning position ``p`` (-1: none).

    A group lists its members in execution order (first use of the weight in the traced graph).
    """

    param: str
    axis: int
    unit_of: np.ndarray = field(repr=False, compare=False)
    kind: str = "param"  # or "buffer"
    shape: tuple[int, ...] = field(default=(), compare=False)  # the whole tensor's shape; () when unknown

    def indices(self, unit: int) -> np.ndarray:
        """Positions of this axis that belong to ``unit``."""
        return np.flatnonzero(self.unit_of == unit)

    def positions_per_unit(self, n_units: int) -> np.ndarray:
        """How many positions of this axis each of ``n_units`` units owns."""
        return np.bincount(self.unit_of[self.unit_of >= 0], minlength=n_units)


@dataclass
class Group:
    """Coupled prunable units of one kind (usually within one layer)."""

    id: str
    kind: str
    layer: int | None
    n_units: int
    members: list[Member]
    unit_params: int
    mask_equivalent: bool  # zeroing a unit's slices computes what removing them does (False: a norm averages over the units)
    factors: tuple[Hashable, ...] = field(repr=False)
    units_per_block: int | None = None  # query_head: query heads per KV group

    @property
    def params(self) -> int:
        return self.unit_params * self.n_units

    @property
    def blocked(self) -> bool:
        """Whether the units come in equal blocks that lose units in equal numbers (query heads per KV group)."""
        return self.kind == "query_head" and bool(self.units_per_block)

    @property
    def blocks(self) -> int:
        """The number of blocks (KV groups of a query-head group); 1 for a group that is not :attr:`blocked`.

        Block ``b`` holds units ``b * units_per_block`` up to ``(b + 1) * units_per_block``.
        """
        return self.n_units // self.units_per_block if self.blocked else 1

    def summary(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "layer": self.layer,
            "units": self.n_units,
            "unit_params": self.unit_params,
            "params": self.params,
            "mask_equivalent": self.mask_equivalent,
            "members": [f"{m.param}:{m.axis}" for m in self.members],
        }


def layer_of(name: str) -> int | None:
    """The layer index in a parameter name: its first integer path component.

    >>> layer_of("model.layers.12.mlp.up_proj.weight"), layer_of("lm_head.weight")
    (12, None)
    """
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def _unit_index(G: nx.DiGraph, axis_node, factor_nodes: tuple, radices: tuple[int, ...]) -> np.ndarray | None:
    """Unit index per position for a group over ``factor_nodes`` (mixed radix), -1 where absent."""
    pos = positions(G, axis_node)
    if any(f not in pos for f in factor_nodes):
        return None
    arrs = []
    for f in factor_nodes:
        occ = np.stack(pos[f])  # (occurrences, positions); occurrences never overlap in Cat layouts
        if ((occ >= 0).sum(axis=0) > 1).any():
            return None  # the same factor twice at one position (Prod(a, a)): not a unit layout
        arrs.append(occ.max(axis=0))
    present = np.all([a >= 0 for a in arrs], axis=0)
    idx = np.zeros_like(arrs[0])
    for a, r in zip(arrs, radices):
        idx = idx * r + a
    return np.where(present, idx, -1)


def _members(G: nx.DiGraph, factor_nodes: tuple, order: dict[str, int]) -> list[Member]:
    """Member axes of a group, in execution order (the last one is e.g. ``down_proj``)."""
    radices = tuple(G.nodes[f]["size"] for f in factor_nodes)
    axes = set(axes_containing(G, factor_nodes[0]))
    for f in factor_nodes[1:]:
        axes &= set(axes_containing(G, f))
    out = []
    for node in sorted(axes, key=lambda n: (order.get(n[1], len(order)), n[1], n[2])):
        unit_of = _unit_index(G, node, factor_nodes, radices)
        if unit_of is not None and (unit_of >= 0).any():
            out.append(Member(node[1], node[2], unit_of, node[0], tuple(G.nodes[node]["shape"])))
    return out


def _unit_params(members: list[Member], shapes: dict[str, tuple[int, ...]]) -> int:
    """Parameters removed with unit 0 (a parameter cut on two axes is counted once)."""
    by_param: dict[str, list[Member]] = {}
    for m in members:
        if m.kind == "param":
            by_param.setdefault(m.param, []).append(m)
    total = 0
    for name, ms in by_param.items():
        shape = list(shapes[name])
        kept = list(shape)
        for m in ms:
            kept[m.axis] -= len(m.indices(0))
        total += int(np.prod(shape)) - int(np.prod(kept))
    return total


class ParamCount:
    """Exact count of the parameters removed with units of some groups, removed together or step by step.

    Every parameter a group cuts is counted as the product of its kept axis sizes, so an entry
    where two removed units cross (the ``gate_proj`` weight of a removed hidden channel and a
    removed MLP channel) is removed once, not once per unit; norm weights and biases are members
    like any other; a tied weight (embedding and LM head) is one parameter under its canonical
    name.  With no cross terms this is ``Group.unit_params`` per removed unit.  A group without
    shaped parameter members (built by hand) counts ``unit_params`` per unit.  Groups counted
    together must not own the same position of an axis (KV groups and query heads of one layer
    do: plan one or the other).

    >>> from depgraph.groups import Group, Member
    >>> rows, cols = np.arange(4), np.arange(3)
    >>> mlp = Group("m", "mlp_channel", 0, 4, [Member("w", 0, rows, shape=(4, 3))], 3, True, ())
    >>> hidden = Group("h", "hidden_channel", None, 3, [Member("w", 1, cols, shape=(4, 3))], 4, False, ())
    >>> count = ParamCount([mlp, hidden])
    >>> count.removed({"m": [0, 1], "h": [2]})  # 2 rows and 1 column of a 4 x 3 weight: 12 - 2 * 2
    8
    >>> count.reset(); count.take({"m": [0, 1]}), count.cost({"h": [2]}), count.total
    (6, 2, 6)
    """

    def __init__(self, groups: list[Group]):
        self._shape: dict[str, tuple[int, ...]] = {}
        self._cuts: dict[str, list[tuple[str, int, np.ndarray]]] = {}  # group id -> (param, axis, positions per unit)
        self._flat: dict[str, int] = {}  # group id -> unit_params, for groups without shaped members
        owned_by: dict[tuple[str, int], tuple[str, np.ndarray]] = {}  # (param, axis) -> a group, positions owned
        for g in groups:
            members = [m for m in g.members if m.kind == "param"]
            if not members or any(not m.shape for m in members):
                self._flat[g.id] = g.unit_params
                continue
            self._cuts[g.id] = []
            for m in members:
                self._shape[m.param] = m.shape
                self._cuts[g.id].append((m.param, m.axis, m.positions_per_unit(g.n_units)))
                other, taken = owned_by.get((m.param, m.axis), (g.id, np.zeros(len(m.unit_of), dtype=bool)))
                if other != g.id and (taken & (m.unit_of >= 0)).any():
                    raise ValueError(
                        f"groups {other} and {g.id} own the same positions of {m.param} axis {m.axis}; "
                        "their removed parameters cannot be counted apart (plan one or the other)"
                    )
                owned_by[(m.param, m.axis)] = (g.id, taken | (m.unit_of >= 0))
        self._cut: dict[tuple[str, int], int] = {}
        self.total = 0

    def _numel(self, param: str, extra: dict[tuple[str, int], int] | None = None) -> int:
        extra = extra or {}
        kept = [n - self._cut.get((param, a), 0) - extra.get((param, a), 0) for a, n in enumerate(self._shape[param])]
        return math.prod(kept)

    def _delta(self, units: dict) -> dict[tuple[str, int], int]:
        delta: dict[tuple[str, int], int] = {}
        for gid, us in units.items():
            idx = np.asarray(list(us), dtype=np.int64)
            for param, axis, per_unit in self._cuts.get(gid, ()):
                delta[(param, axis)] = delta.get((param, axis), 0) + int(per_unit[idx].sum())
        return delta

    def cost(self, units: dict) -> int:
        """Parameters that removing ``units[group id]`` of each group would remove now (nothing changes)."""
        flat = sum(len(list(us)) * self._flat[gid] for gid, us in units.items() if gid in self._flat)
        delta = self._delta(units)
        return flat + sum(self._numel(p) - self._numel(p, delta) for p in {p for p, _ in delta})

    def take(self, units: dict) -> int:
        """Remove ``units[group id]`` of each group; returns the parameters that removes (``total`` grows by it)."""
        cost = self.cost(units)
        for key, n in self._delta(units).items():
            self._cut[key] = self._cut.get(key, 0) + n
        self.total += cost
        return cost

    def reset(self) -> None:
        """Back to nothing removed."""
        self._cut, self.total = {}, 0

    def removed(self, units: dict) -> int:
        """Parameters removed with ``units[group id]`` of each group, counted from scratch (the state is reset)."""
        self.reset()
        return self.take(units)

def segments(t) -> list[frozenset]:
    """The distinct sets of factors that index one position of a layout.

    In a fused ``qkv = Cat(Prod(kv, rep, d), Prod(kv, d), Prod(kv, d))`` a key row is
    indexed by ``{kv, d}``: ``kv`` without ``rep`` is what marks ``kv`` as the KV-head factor.

    >>> from depgraph.layout import Prod
    >>> kv, rep, d = Factor(4), Factor(2), Factor(8)
    >>> sorted(len(s) for s in segments(Cat((Prod((kv, rep, d)), Prod((kv, d))))))
    [2, 3]
    """
    t = resolve(t)
    if isinstance(t, Factor):
        return [frozenset([t])]
    if isinstance(t, Cat):
        return list(dict.fromkeys(s for c in t.children for s in segments(c)))
    out = [frozenset()]
    for c in t.children:
        out = list(dict.fromkeys(a | b for a in out for b in segments(c)))
    return out


def classify(trace: Trace) -> dict[str, object]:
    """Root factors by role, from the tracer's op-level annotations.

    Returns a dict with ``data`` (batch and sequence axes of the inputs), ``heads`` (per attention
    site, the non-data factors of its batch axes), ``atomic`` (head dims: contracted or value-side
    per head), ``hidden`` (embedding features), ``vocab`` (rows of the tables the token ids look up,
    and the logits' last axis), ``position`` (rows of the other embedding tables), ``linear_out`` /
    ``linear_in`` (factors produced / consumed by a linear map) and ``inexact`` (normalised over).
    """
    data = {f for t in trace.data_terms for f in factors(t)}
    heads: list[list] = []
    atomic: set = set()
    for site in trace.sites.get("contraction", []):
        hs = [f for t in site["batch"] for f in factors(t) if f not in data]
        if not hs:
            continue
        heads.append(hs)
        for t in site["contracted"] + site["free"]:
            atomic.update(f for f in factors(t) if f not in data)
    embeddings = trace.sites.get("embedding", [])
    hidden = {f for s in embeddings for f in factors(s["out"])}
    vocab = {f for s in embeddings if s["by_tokens"] for f in factors(s["rows"])}
    vocab |= {f for s in trace.sites.get("output", []) for f in factors(s["out"])}
    position = {f for s in embeddings if not s["by_tokens"] for f in factors(s["rows"])} - vocab
    linear = trace.sites.get("linear", [])
    return {
        "data": data,
        "heads": heads,
        "atomic": atomic,
        "hidden": hidden,
        "vocab": vocab,
        "position": position,
        "linear_out": {f for s in linear for f in factors(s["out"])},
        "linear_in": {f for s in linear for f in factors(s["inp"])},
        "inexact": {f for s in trace.sites.get("normalized", []) for t in s["terms"] for f in factors(t)},
    }


@dataclass
class _Finder:
    """Group-finding state: which factors are prunable, which are taken, the groups found so far."""

    trace: Trace
    G: nx.DiGraph
    roles: dict[str, object]
    param_factors: set
    shapes: dict[str, tuple[int, ...]]
    seen: set = field(default_factory=set)
    groups: list[Group] = field(default_factory=list)

    def prunable(self, f: Factor) -> bool:
        """A factor of some parameter axis that is not frozen, data, or a head dim."""
        roles = self.roles
        return f in self.param_factors and not f.frozen and f not in roles["data"] and f not in roles["atomic"]

    def take(self, f: Factor) -> bool:
        """Claim a prunable factor for a group; False when it is not prunable or already claimed."""
        if not self.prunable(f) or f in self.seen:
            return False
        self.seen.add(f)
        return True

    def add(self, kind: str, fs: tuple, per_block: int | None = None) -> None:
        """A group of ``kind`` over the factors ``fs`` (mixed radix), if any parameter axis holds it."""
        key = tuple(term_key(resolve(f)) for f in fs)
        members = _members(self.G, key, self.trace.order)
        if not members:
            return
        layers = {layer_of(m.param) for m in members if m.kind == "param"}
        self.groups.append(
            Group(
                id="",
                kind=kind,
                layer=layers.pop() if len(layers) == 1 else None,
                n_units=int(np.prod([f.size for f in fs])),
                members=members,
                unit_params=_unit_params(members, self.shapes),
                mask_equivalent=not any(f in self.roles["inexact"] for f in fs),
                factors=key,
                units_per_block=per_block,
            )
        )


def _head_groups(fd: _Finder) -> None:
    """Attention heads, or KV groups and the query heads inside them, of every attention site."""
    axis_factors = [fs for info in fd.trace.params.values() for t in info.axes for fs in segments(t)]
    for hs in fd.roles["heads"]:
        hs = [f for f in dict.fromkeys(hs) if fd.prunable(f)]
        if not hs or tuple(hs) in fd.seen:
            continue
        fd.seen.add(tuple(hs))
        fd.seen.update(hs)
        # a KV factor also indexes some parameter axis without the query-only (repeat) factors
        kv = [f for f in hs if any(f in fs and not set(hs) <= fs for fs in axis_factors)] if len(hs) > 1 else hs
        rep = [f for f in hs if f not in kv]
        per_block = int(np.prod([r.size for r in rep]))
        if not rep:
            fd.add("attention_head", tuple(kv))
        elif not kv:
            fd.add("query_head", tuple(rep), per_block)
        else:
            fd.add("kv_group", tuple(kv))
            fd.add("query_head", tuple(kv + rep), per_block)


def _hidden_groups(fd: _Finder) -> None:
    """The residual stream: every embedding's feature factor not claimed by a head group."""
    for f in sorted(fd.roles["hidden"], key=lambda f: f.id):
        if fd.take(f):
            fd.add("hidden_channel", (f,))


def _channel_kind(fd: _Finder, f: Factor) -> str:
    """The kind of a single-factor group: MLP channel, vocabulary or position row, else unplaced."""
    roles = fd.roles
    if f in roles["linear_out"] and f in roles["linear_in"]:
        return "mlp_channel"  # produced by one linear map and consumed by another
    if f in roles["vocab"]:
        return "vocab"
    if f in roles["position"]:
        return "position"
    return "unplaced"


def _channel_groups(fd: _Finder) -> None:
    """One group per remaining prunable factor; an MLP channel spanning several layers is unplaced."""
    for f in sorted(fd.param_factors, key=lambda f: f.id):
        if fd.take(f):
            fd.add(_channel_kind(fd, f), (f,))
    for g in fd.groups:
        spans = {layer_of(m.param) for m in g.members} - {None}
        if g.kind == "mlp_channel" and len(spans) > 1:
            g.kind = "unplaced"  # couples several layers: not an MLP's own channel


def _name_and_order(groups: list[Group]) -> list[Group]:
    """Groups by layer (model-wide ones last), then kind; ids ``kind@layer`` (``#n`` for repeats)."""
    groups = sorted(groups, key=lambda g: (g.layer is None, g.layer if g.layer is not None else 0, KINDS.index(g.kind)))
    counts: dict[str, int] = {}
    for g in groups:
        base = f"{g.kind}@{'all' if g.layer is None else g.layer}"
        n = counts.get(base, 0)
        counts[base] = n + 1
        g.id = base if n == 0 else f"{base}#{n}"
    return groups


def find_groups(trace: Trace, G: nx.DiGraph | None = None) -> list[Group]:
    """All prunable groups of a traced model, ordered by layer then kind.

    Head groups claim their factors first, then hidden channels, then every remaining prunable
    factor becomes a single-factor group (see the kinds in the module docstring).

    Parameters
    ----------
    trace : Trace
        The result of :func:`depgraph.trace`.
    G : networkx.DiGraph, optional
        Its dependency graph (built if not given).

    Returns
    -------
    list of Group
    """
    G = build_graph(trace) if G is None else G
    param_factors = {f for info in trace.params.values() for t in info.axes for f in factors(t)}
    shapes = {n: i.shape for n, i in trace.params.items()}
    fd = _Finder(trace, G, classify(trace), param_factors, shapes)
    _head_groups(fd)
    _hidden_groups(fd)
    _channel_groups(fd)
    return _name_and_order(fd.groups)


__all__ = ["Group", "Member", "KINDS", "find_groups", "layer_of", "classify"]
