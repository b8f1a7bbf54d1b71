"""Repeated decoder layers: trace each distinct layer once and replicate its layout terms.

A 70B Llama has 80 identical decoder layers; exporting all of them costs seconds and tells
nothing the first two do not.  :func:`trace_repeated` finds the layer stack (the
``nn.ModuleList`` holding the most parameters), gives every layer a *signature* (its module
classes, parameter and buffer shapes, and the scalar attributes of every submodule, the layer
index excepted), exports only the shortest prefix of the stack holding every repeated signature
twice, and copies the layout terms, annotations and execution order of a traced layer to each
untraced layer of the same signature, with fresh factors for everything local to the layer.

Nothing is guessed.  The two traced copies of each repeated signature must come out the same
(up to renaming their local factors), and no factor may couple two layers unless something
outside the stack holds it too (the residual stream reaches the embeddings); otherwise, or when
the prefix would be the whole stack anyway, the full model is traced as before.  Layers that
are not under one stack, share parameters, or differ in any attribute are never replicated.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import torch
from torch import nn

from .layout import Cat, Factor, Prod, Term, factors, resolve
from .ops.registry import TensorInfo, module_path

MIN_COPIES = 2  # traced copies of each repeated signature: the second one checks the first


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The decoder layer stack: the ``nn.ModuleList`` of two or more modules with the most parameters.

    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    ...         self.heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(2))
    >>> layer_stack(Net())[0]
    'blocks'
    """
    best, most = None, -1
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 2 and name:
            n = sum(p.numel() for p in m.parameters())
            if n > most:
                best, most = (name, m), n
    return best


def _value_key(v: Any) -> Hashable:
    """A hashable stand-in for a module attribute's value (modules are compared as submodules)."""
    if v is None or isinstance(v, (bool, int, float, str, torch.dtype, torch.device)):
        return v
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(_value_key(x) for x in v))
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), str(v.dtype))
    if isinstance(v, nn.Module):
        return ("module", id(v))  # the same module object, or another one
    if callable(v):
        return ("callable", getattr(v, "__qualname__", type(v).__qualname__), getattr(v, "__self__", None) is None)
    return ("object", type(v).__qualname__, id(v))  # a config or any other object: the same object only


def _attributes(layer: nn.Module) -> dict[tuple[str, str], Any]:
    """``(submodule path, attribute) -> value`` of every public non-module attribute in ``layer``."""
    out = {}
    for path, m in layer.named_modules(remove_duplicate=False):
        for k, v in vars(m).items():
            if not k.startswith("_") and k != "training":
                out[(path, k)] = v
    return out


def layer_signatures(layers: nn.ModuleList) -> list[Hashable]:
    """One signature per layer: equal signatures trace to the same layouts.

    An ``int`` attribute equal to the layer's position in every layer (``layer_idx``) is left
    out; every other attribute counts with its value.

    >>> sigs = layer_signatures(nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)]))
    >>> sigs[0] == sigs[1], sigs[0] == sigs[2]
    (True, False)
    """
    attrs = [_attributes(layer) for layer in layers]
    index_like = {
        key for key in attrs[0]
        if all(type(a.get(key)) is int and a.get(key) == i for i, a in enumerate(attrs))
    }
    out = []
    for layer, a in zip(layers, attrs):
        mods = tuple(
            (
                path,
                f"{type(m).__module__}.{type(m).__qualname__}",
                tuple((n, tuple(p.shape), str(p.dtype), p.requires_grad) for n, p in m._parameters.items() if p is not None),
                tuple((n, tuple(b.shape), str(b.dtype)) for n, b in m._buffers.items() if b is not None),
            )
            for path, m in layer.named_modules(remove_duplicate=False)
        )
        values = tuple(sorted(((k, _value_key(v)) for k, v in a.items() if k not in index_like), key=repr))
        out.append((mods, values))
    return out


def traced_prefix(signatures: list[Hashable]) -> int:
    """Layers to trace: the shortest prefix holding :data:`MIN_COPIES` of every repeated signature.

    >>> traced_prefix(["a"] * 80), traced_prefix(["s", "f"] * 10), traced_prefix(["a", "b", "c"])
    (2, 4, 3)
    """
    counts = Counter(signatures)
    need = {s: min(MIN_COPIES, c) for s, c in counts.items()}
    seen: Counter = Counter()
    for i, s in enumerate(signatures):
        if all(seen[t] >= n for t, n in need.items()):
            return i
        seen[s] += 1
    return len(signatures)


def truncated(model: nn.Module, path: str, k: int) -> nn.Module:
    """A shallow copy of ``model`` whose stack at ``path`` holds only its first ``k`` layers.

    Only the modules on the way to the stack are copied (their child dicts too); ``model`` and
    every layer are shared, never modified.
    """
    root = copy.copy(model)
    root._modules = dict(model._modules)
    parent = root
    names = path.split(".")
    for name in names[:-1]:
        child = copy.copy(parent._modules[name])
        child._modules = dict(child._modules)
        parent._modules[name] = child
        parent = child
    parent._modules[names[-1]] = nn.ModuleList(list(parent._modules[names[-1]])[:k])
    return root


def _layer_index(name: str | None, prefix: str) -> int | None:
    """The layer a parameter name or module path belongs to (``prefix`` is the stack's path)."""
    if not name or not name.startswith(prefix):
        return None
    m = re.match(r"(\d+)(?:\.|$)", name[len(prefix) :])
    return int(m.group(1)) if m else None


def _terms(value: Any) -> Iterable[Term]:
    """Every layout term in an annotation value or abstract value (nested in tuples and lists)."""
    if isinstance(value, TensorInfo):
        yield from value.axes
    elif isinstance(value, (Factor, Prod, Cat)):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _terms(v)


def _map_terms(value: Any, fn: Callable[[Term], Any]) -> Any:
    if isinstance(value, (Factor, Prod, Cat)):
        return fn(value)
    if isinstance(value, TensorInfo):
        return TensorInfo(value.shape, tuple(fn(t) for t in value.axes))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_terms(v, fn) for v in value)
    return value


class _Replicator:
    """Where each factor of a truncated trace lives: outside the stack (global) or in one traced layer."""

    def __init__(self, tr, prefix: str, k: int):
        self.tr, self.prefix = tr, prefix
        self.glob: set[Factor] = set()
        self.local: list[set[Factor]] = [set() for _ in range(k)]
        self.cross = False

        def place(where: int | None, values: Iterable[Any]) -> None:
            fs = {f for v in values for t in _terms(v) for f in factors(t)}
            (self.glob if where is None else self.local[where]).update(fs)

        for table in (tr.params, tr.buffers):
            for name, info in table.items():
                place(_layer_index(name, prefix), [info])
        place(None, tr.data_terms)
        for sites in tr.sites.values():
            for site in sites:
                place(_layer_index(site.get("module"), prefix), site.values())
        for node in tr.graph.nodes:
            if "depgraph" in node.meta:
                place(_layer_index(module_path(node), prefix), [node.meta["depgraph"]])
        seen: set[Factor] = set()
        for j in range(k):
            self.local[j] -= self.glob
            self.cross |= bool(self.local[j] & seen)  # a factor two layers hold and nothing outside does
            seen |= self.local[j]

    def canonical(self, j: int) -> Hashable:
        """Layer ``j``'s layouts and annotations with its local factors numbered by first appearance."""
        numbers: dict[Factor, int] = {}

        def canon(t: Term) -> Hashable:
            t = resolve(t)
            if isinstance(t, Factor):
                if t in self.local[j]:
                    n = numbers.setdefault(t, len(numbers))
                    return ("L", n, t.size, t.frozen, t.origin)
                return ("G", t.id)
            return (type(t).__name__, tuple(canon(c) for c in t.children))

        head = f"{self.prefix}{j}"
        out = []
        for table in (self.tr.params, self.tr.buffers):
            for name in sorted(n for n in table if _layer_index(n, self.prefix) == j):
                out.append((name[len(head) :], tuple(table[name].shape), tuple(canon(t) for t in table[name].axes)))
        for kind, sites in sorted(self.tr.sites.items()):
            for site in sites:
                if _layer_index(site.get("module"), self.prefix) == j:
                    # strings name fx nodes (``node``, ``weight``, ``indices``): they differ between layers
                    fields = sorted((k, v) for k, v in site.items() if not isinstance(v, str) and v is not None)
                    out.append((kind, site["module"][len(head) :], tuple((k, _map_terms(v, canon)) for k, v in fields)))
        return tuple(out)

    def copier(self, j: int) -> Callable[[Term], Term]:
        """Layer ``j``'s terms with every local factor replaced by a fresh one (created in ``j``'s order)."""
        memo: dict[Factor, Factor] = {}
        for f in sorted(self.local[j], key=lambda f: f.id):
            g = memo[f] = Factor(f.size, f.origin)
            g.frozen = f.frozen

        def sub(t: Term) -> Term:
            t = resolve(t)
            if isinstance(t, Factor):
                return memo.get(t, t)
            return type(t)(tuple(sub(c) for c in t.children))

        return sub


def replicate(tr, prefix: str, signatures: list[Hashable], k: int):
    """The trace of the whole stack from ``tr``, the trace of its first ``k`` layers; ``None`` if unsafe.

    ``prefix`` is the stack's path with a trailing dot.  Returns ``None`` when two layers share a
    factor nothing outside the stack holds, or when two traced layers of one signature differ.
    """
    rep = _Replicator(tr, prefix, k)
    if rep.cross:
        return None
    first: dict[Hashable, int] = {}
    for j in range(k):
        s = signatures[j]
        if s in first and rep.canonical(first[s]) != rep.canonical(j):
            return None
        first.setdefault(s, j)
    source = {i: first[signatures[i]] for i in range(k, len(signatures))}
    subs = {i: rep.copier(j) for i, j in source.items()}  # one per untraced layer: its params and sites share factors

    def copy_of(name: str, i: int) -> str:
        j = source[i]
        return f"{prefix}{i}{name[len(f'{prefix}{j}') :]}"

    def expand(names: list[str], where: Callable[[str], int | None]) -> list[tuple[str, str, int | None]]:
        """``(new name, traced name, layer)`` in the traced order, each untraced layer after the traced ones."""
        layer = [where(n) for n in names]
        inside = [n for n, i in enumerate(layer) if i is not None]
        if not inside:
            return [(n, n, None) for n in names]
        hi = inside[-1] + 1
        out = [(n, n, None) for n in names[:hi]]
        for i, j in source.items():
            out += [(copy_of(n, i), n, i) for n, at in zip(names, layer) if at == j]
        return out + [(n, n, None) for n in names[hi:]]

    def table(traced: dict[str, TensorInfo]) -> dict[str, TensorInfo]:
        return {
            new: traced[old] if i is None else _map_terms(traced[old], subs[i])
            for new, old, i in expand(list(traced), lambda n: _layer_index(n, prefix))
        }

    sites: dict[str, list[dict]] = {}
    for kind, listed in tr.sites.items():
        keyed = {str(n): s for n, s in enumerate(listed)}
        where = {str(n): _layer_index(s.get("module"), prefix) for n, s in enumerate(listed)}
        sites[kind] = [
            keyed[old] if i is None else {**{f: _map_terms(v, subs[i]) for f, v in keyed[old].items()},
                                          "module": copy_of(keyed[old]["module"], i)}
            for _, old, i in expand(list(keyed), where.__getitem__)
        ]
    conflicts = list(tr.conflicts)
    for i, j in source.items():
        mine = re.compile(rf"{re.escape(prefix)}{j}(?![0-9])")
        conflicts += [mine.sub(f"{prefix}{i}", c) for c in tr.conflicts if mine.search(c)]
    order: dict[str, int] = {}
    rank, last = -1, None
    for new, old, i in expand(sorted(tr.order, key=tr.order.__getitem__), lambda n: _layer_index(n, prefix)):
        rank += (tr.order[old], i) != last  # tied weights share a rank
        order[new], last = rank, (tr.order[old], i)
    return dataclasses.replace(
        tr, params=table(tr.params), buffers=table(tr.buffers), sites=sites, conflicts=conflicts, order=order,
        replicated={f"{prefix}{i}": f"{prefix}{j}" for i, j in source.items()},
    )


__all__ = ["layer_stack", "layer_signatures", "traced_prefix", "truncated", "replicate", "MIN_COPIES"]
