"""Layout algebra: how the indices of one tensor axis decompose into prunable factors.

Every axis of every traced tensor carries a *layout term*:

* :class:`Factor` -- an atomic index space of a given size (a union-find node).  Two axes
  that share a factor are coupled index-for-index: removing index ``i`` from one removes
  it from the other.
* :class:`Prod` -- a row-major product, e.g. ``Prod(heads, head_dim)`` for the output
  axis of ``q_proj`` after ``view(B, T, heads, head_dim)``.
* :class:`Cat` -- a concatenation, e.g. ``Cat(q, k, v)`` for a fused ``qkv_proj``.

Op handlers *unify* terms (``x + y`` says the aligned axes are the same index space).
Unification refines free factors on demand: unifying a free factor of size 64 with
``Prod(8, 8)`` binds it to a product of two new factors.  When two terms cannot be
reconciled (a product against a concatenation that does not line up) nothing is guessed:
every factor involved is *frozen* -- it stays in the graph but can never be pruned.

>>> a, b = Factor(64), Factor(8)
>>> unify(a, Prod((b, Factor(8))))
>>> resolve(a)
Prod(F8, F8)
>>> size(resolve(a)) == 64
True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

_ids = itertools.count()


class LayoutConflict(Exception):
    """Two layouts cannot be reconciled; the factors involved get frozen."""


class Factor:
    """An atomic index space; a union-find node that may be refined into a term."""

    __slots__ = ("size", "parent", "binding", "id", "frozen", "origin")

    def __init__(self, size: int, origin: str = "") -> None:
        self.size = int(size)
        self.parent: Factor | None = None
        self.binding: Term | None = None
        self.id = next(_ids)
        self.frozen = False
        self.origin = origin

    def __repr__(self) -> str:
        return f"F{self.size}" + ("*" if self.frozen else "")


@dataclass(frozen=True)
class Prod:
    """Row-major product of child index spaces (major first)."""

    children: tuple

    def __repr__(self) -> str:
        return "Prod(" + ", ".join(map(repr, self.children)) + ")"


@dataclass(frozen=True)
class Cat:
    """Concatenation of child index spaces."""

    children: tuple

    def __repr__(self) -> str:
        return "Cat(" + ", ".join(map(repr, self.children)) + ")"


Term = Factor | Prod | Cat
ONE = Prod(())  # the size-1 axis: coupled to nothing


def find(f: Factor) -> Factor:
    """Union-find root of ``f`` (with path compression)."""
    root = f
    while root.parent is not None:
        root = root.parent
    while f.parent is not None and f.parent is not root:
        f.parent, f = root, f.parent
    return root


def size(t: Term) -> int:
    if isinstance(t, Factor):
        return t.size
    if isinstance(t, Prod):
        n = 1
        for c in t.children:
            n *= size(c)
        return n
    return sum(size(c) for c in t.children)


def resolve(t: Term) -> Term:
    """Normal form: roots only, bindings expanded, nested Prod/Cat flattened, size-1 dropped."""
    if isinstance(t, Factor):
        r = find(t)
        if r.binding is None:
            return r if r.size != 1 else ONE
        return resolve(r.binding)
    kind = type(t)
    out = []
    for c in t.children:
        c = resolve(c)
        if isinstance(c, kind):
            out.extend(c.children)
        elif kind is Prod and c == ONE:
            continue
        elif kind is Cat and size(c) == 0:
            continue
        else:
            out.append(c)
    if len(out) == 1:
        return out[0]
    return kind(tuple(out))


def factors(t: Term) -> Iterator[Factor]:
    """The root factors in a term, in order, with repetition."""
    t = resolve(t)
    if isinstance(t, Factor):
        yield t
    else:
        for c in t.children:
            yield from factors(c)


def freeze(*terms: Term) -> None:
    """Mark every factor in ``terms`` as never prunable."""
    for t in terms:
        for f in factors(t):
            f.frozen = True


def _bind(v: Factor, t: Term) -> None:
    if any(f is v for f in factors(t)):
        freeze(v, t)
        raise LayoutConflict(f"{v} occurs in {t}")
    v.binding = t
    if v.frozen:
        freeze(t)


def unify(a: Term, b: Term) -> None:
    """Declare two terms the same index space, refining free factors as needed.

    Raises :class:`LayoutConflict` (after freezing what is involved) when the two
    structures cannot be reconciled.
    """
    a, b = resolve(a), resolve(b)
    if size(a) != size(b):
        raise ValueError(f"cannot unify layouts of different sizes: {a} ({size(a)}) vs {b} ({size(b)})")
    if a is b or a == b:
        return
    if isinstance(a, Factor) and isinstance(b, Factor):
        b.parent = a
        a.frozen = a.frozen or b.frozen
        if a.frozen:
            freeze(a)
        return
    if isinstance(a, Factor):
        _bind(a, b)
        return
    if isinstance(b, Factor):
        _bind(b, a)
        return
    if type(a) is type(b):
        _unify_seq(list(a.children), list(b.children), type(a), a, b)
        return
    freeze(a, b)
    raise LayoutConflict(f"cannot reconcile {a} with {b}")


def _unify_seq(xs: list, ys: list, kind: type, a: Term, b: Term) -> None:
    while xs and ys:
        x, y = resolve(xs[0]), resolve(ys[0])
        sx, sy = size(x), size(y)
        if sx == sy:
            unify(x, y)
            xs.pop(0)
            ys.pop(0)
            continue
        big, small, seq = (x, sy, xs) if sx > sy else (y, sx, ys)
        parts = split_leading(big, small, kind)
        if parts is None:
            freeze(a, b)
            raise LayoutConflict(f"cannot reconcile {a} with {b}")
        seq[0:1] = list(parts)
    if xs or ys:  # only size-1 leftovers can remain
        if any(size(resolve(t)) != 1 for t in xs + ys):
            freeze(a, b)
            raise LayoutConflict(f"cannot reconcile {a} with {b}")


def split_leading(t: Term, n: int, kind: type) -> tuple[Term, Term] | None:
    """Split ``t`` into a leading part of size ``n`` and the rest, as a ``kind`` (Prod or Cat).

    Free factors are refined; a product can be cut as a concatenation when the cut falls on
    a boundary of its leading factor (``Prod(h, d)`` at ``k*|d|`` gives ``Prod(h[:k], d)``
    and ``Prod(h[k:], d)``).  Returns ``None`` when the cut is impossible.
    """
    t = resolve(t)
    total = size(t)
    if not 0 < n < total:
        return None
    if isinstance(t, Factor):
        if kind is Prod:
            if total % n:
                return None
            head, rest = Factor(n, t.origin), Factor(total // n, t.origin)
        else:
            head, rest = Factor(n, t.origin), Factor(total - n, t.origin)
        _bind(t, kind((head, rest)))
        return head, rest
    if kind is Prod:
        if isinstance(t, Prod):  # flattened products are consumed factor by factor
            first = t.children[0]
            s0 = size(first)
            if s0 == n:
                return first, Prod(t.children[1:])
            if s0 > n:
                parts = split_leading(first, n, Prod)
                if parts is None:
                    return None
                return parts[0], Prod((parts[1],) + t.children[1:])
            if n % s0:
                return None
            inner = split_leading(Prod(t.children[1:]), n // s0, Prod)
            if inner is None:
                return None
            return Prod((first, inner[0])), inner[1]
        return None  # a concatenation is not a product
    # kind is Cat
    if isinstance(t, Cat):
        offset = 0
        for i, c in enumerate(t.children):
            sc = size(c)
            if offset + sc == n:
                return Cat(t.children[: i + 1]), Cat(t.children[i + 1 :])
            if offset + sc > n:
                parts = split_leading(c, n - offset, Cat)
                if parts is None:
                    return None
                return Cat(t.children[:i] + (parts[0],)), Cat((parts[1],) + t.children[i + 1 :])
            offset += sc
        return None
    # a product cut as a concatenation along its leading factor
    first, rest = t.children[0], Prod(t.children[1:])
    inner = size(rest)
    if n % inner:
        return None
    parts = split_leading(first, n // inner, Cat)
    if parts is None:
        return None
    return Prod((parts[0],) + t.children[1:]), Prod((parts[1],) + t.children[1:])


def cut(t: Term, start: int, stop: int) -> Term:
    """The sub-term for positions ``[start, stop)`` of ``t``, refining ``t`` as a concatenation."""
    total = size(t)
    if start == 0 and stop == total:
        return resolve(t)
    mid = t
    if start > 0:
        parts = split_leading(mid, start, Cat)
        if parts is None:
            freeze(t)
            raise LayoutConflict(f"cannot slice {resolve(t)} at {start}")
        mid = parts[1]
    if stop < total:
        parts = split_leading(mid, stop - start, Cat)
        if parts is None:
            freeze(t)
            raise LayoutConflict(f"cannot slice {resolve(t)} at {stop}")
        mid = parts[0]
    return resolve(mid)
