"""Contractions: linear layers, matrix products, attention and embeddings.

A contraction couples the contracted axes of its operands; batch axes of a batched
product are shared too.  Batched products whose batch axes carry non-data factors are
recorded as ``contraction`` sites: those factors are attention heads, and the contracted
or value-side feature factors are head dims (atomic).
"""

from __future__ import annotations

from ..layout import Factor, Prod
from .registry import TensorInfo, bind, register, unsupported


def _param_name(node, i):
    arg = node.args[i] if i < len(node.args) else None
    return getattr(arg, "name", None)


@register("aten.linear")
def linear(tr, node, x, weight, bias=None):
    """``x (..., in) @ W (out, in).T + b (out)``."""
    tr.unify(x.axes[-1], weight.axes[1])
    if isinstance(bias, TensorInfo):
        tr.unify(bias.axes[0], weight.axes[0])
    out = x.axes[:-1] + (weight.axes[0],)
    tr.annotate("linear", weight=_param_name(node, 1), inp=weight.axes[1], out=weight.axes[0])
    return TensorInfo(tr.out_shape(node), out)


def _matmul2(tr, node, a, b):
    tr.unify(a.axes[-1], b.axes[-2])
    return TensorInfo(tr.out_shape(node), (a.axes[-2], b.axes[-1]))


@register("aten.mm")
def mm(tr, node, a, b):
    out = _matmul2(tr, node, a, b)
    tr.annotate("linear", weight=_param_name(node, 1), inp=b.axes[0], out=b.axes[1])
    return out


@register("aten.addmm")
def addmm(tr, node, bias, a, b, *args, **kwargs):
    """``bias + a @ b`` -- e.g. GPT-2's ``Conv1D`` with its ``(in, out)`` weight."""
    out = _matmul2(tr, node, a, b)
    axes = tr.broadcast([out, bias], out.shape)
    tr.annotate("linear", weight=_param_name(node, 2), inp=b.axes[0], out=b.axes[1])
    return TensorInfo(out.shape, axes)


def _batched(tr, a, b, out_shape):
    """``a (..., n, k) @ b (..., k, m)`` with broadcast batch axes."""
    tr.unify(a.axes[-1], b.axes[-2])
    batch_shape = out_shape[:-2]
    batch = tr.broadcast(
        [TensorInfo(a.shape[:-2], a.axes[:-2]), TensorInfo(b.shape[:-2], b.axes[:-2])], batch_shape
    )
    if batch:
        rhs = [t for n, t in zip(b.shape[:-2], b.axes[:-2]) if n != 1]
        tr.annotate("contraction", batch=list(batch), rhs_batch=rhs, contracted=[a.axes[-1]], free=[a.axes[-2], b.axes[-1]])
    return TensorInfo(out_shape, batch + (a.axes[-2], b.axes[-1]))


@register("aten.bmm")
def bmm(tr, node, a, b):
    return _batched(tr, a, b, tr.out_shape(node))


@register("aten.baddbmm")
def baddbmm(tr, node, inp, a, b, *args, **kwargs):
    out = _batched(tr, a, b, tr.out_shape(node))
    return TensorInfo(out.shape, tr.broadcast([out, inp], out.shape))


@register("aten.matmul")
def matmul(tr, node, a, b):
    """``a @ b`` in every rank combination; a 2-D ``b`` is a linear map of ``a``'s last axis.

    ``x @ W.T`` (Falcon's ``FalconLinear``) is recorded as a ``linear`` site like ``aten.linear``,
    so the channels between two such maps are MLP channels.
    """
    shape = tr.out_shape(node)
    if b.ndim == 2 and a.ndim >= 2:
        tr.annotate("linear", weight=_param_name(node, 1), inp=b.axes[0], out=b.axes[1])
    if a.ndim == 1 and b.ndim == 1:
        tr.unify(a.axes[0], b.axes[0])
        return TensorInfo(shape, ())
    if b.ndim == 1:
        tr.unify(a.axes[-1], b.axes[0])
        return TensorInfo(shape, a.axes[:-1])
    if a.ndim == 1:
        tr.unify(a.axes[0], b.axes[-2])
        return TensorInfo(shape, b.axes[:-2] + (b.axes[-1],))
    if a.ndim == 2 and b.ndim == 2:
        return _matmul2(tr, node, a, b)
    return _batched(tr, a, b, shape)


@register("aten.scaled_dot_product_attention")
def sdpa(tr, node, *args, **kwargs):
    """``q (..., Hq, L, E)``, ``k (..., Hk, S, E)``, ``v (..., Hk, S, Ev)`` -> ``(..., Hq, L, Ev)``.

    With ``enable_gqa`` (Hq = g * Hk) query head ``h`` reads KV head ``h // g``: the query
    head axis is ``Prod(kv_heads, group)``.
    """
    a = bind(node, args, kwargs)
    q, k, v, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
    lead = tr.broadcast(
        [TensorInfo(t.shape[:-3], t.axes[:-3]) for t in (q, k, v)], tr.out_shape(node)[:-3]
    )
    hq, hk = q.shape[-3], k.shape[-3]
    tr.unify(k.axes[-3], v.axes[-3])
    if hq == hk:
        tr.unify(q.axes[-3], k.axes[-3])
    elif hq % hk == 0:
        tr.unify(q.axes[-3], Prod((k.axes[-3], Factor(hq // hk, "expand"))))
    else:
        raise unsupported(node, f"{hq} query heads do not divide into {hk} key/value heads")
    tr.unify(q.axes[-1], k.axes[-1])
    tr.unify(k.axes[-2], v.axes[-2])
    heads = q.axes[-3]
    scores = TensorInfo(lead + (heads, q.axes[-2], k.axes[-2]), None)
    if isinstance(mask, TensorInfo):
        shape = tuple(q.shape[:-3]) + (hq, q.shape[-2], k.shape[-2])
        tr.broadcast([TensorInfo(shape, lead + (heads, q.axes[-2], k.axes[-2])), mask], shape)
    del scores
    tr.annotate(
        "contraction", batch=list(lead) + [heads], rhs_batch=list(k.axes[:-2]), contracted=[q.axes[-1]], free=[v.axes[-1]]
    )
    tr.annotate("normalized", terms=[k.axes[-2]], op="softmax")
    return TensorInfo(tr.out_shape(node), lead + (heads, q.axes[-2], v.axes[-1]))


@register("aten.einsum")
def einsum(tr, node, equation, operands):
    """Same letter, same index space; batch letters shared by all operands and the output are recorded."""
    lhs, rhs = equation.replace(" ", "").split("->")
    specs = lhs.split(",")
    if any("." in s for s in specs):
        raise unsupported(node, f"einsum with an ellipsis ({equation!r})")
    terms: dict[str, list] = {}
    for spec, op in zip(specs, operands):
        for letter, n, t in zip(spec, op.shape, op.axes):
            if n != 1:
                terms.setdefault(letter, []).append(t)
    for ts in terms.values():
        for t in ts[1:]:
            tr.unify(ts[0], t)
    shape = tr.out_shape(node)
    axes = tuple(terms[c][0] if c in terms else tr.axis(n) for c, n in zip(rhs, shape))
    return TensorInfo(shape, axes)


@register("aten.embedding")
def embedding(tr, node, weight, indices, *args, **kwargs):
    """``W (rows, dim)[ids]``: the output's last axis is the weight's feature axis.

    The site records the rows and the fx node of the indices, so that :func:`depgraph.trace`
    can tell a table looked up by the token ids (vocabulary) from one looked up by positions.
    """
    if weight.ndim != 2:
        raise unsupported(node, f"an embedding table of shape {weight.shape} (expected (rows, dim))")
    tr.annotate("embedding", weight=_param_name(node, 0), out=weight.axes[1], rows=weight.axes[0],
                indices=_param_name(node, 1))
    return TensorInfo(tr.out_shape(node), indices.axes + (weight.axes[1],))
