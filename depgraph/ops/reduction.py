"""Reductions and normalisations.

A reduced axis disappears (or becomes size 1 with ``keepdim``).  A sum over a channel is
exact under pruning (removed channels contribute zero); a mean, variance, max or softmax
is not -- those axes are recorded as ``normalized`` so the group finder can say which
groups prune exactly.
"""

from __future__ import annotations

from ..layout import ONE, freeze
from .registry import TensorInfo, bind, op_key, register

EXACT = {"sum", "any", "all", "nansum", "count_nonzero"}


def _dims(x: TensorInfo, dim) -> list[int]:
    if dim is None or dim == [] or dim == ():
        return list(range(x.ndim))
    if isinstance(dim, int):
        dim = [dim]
    return sorted(d % x.ndim for d in dim)


@register(
    "aten.sum", "aten.mean", "aten.amax", "aten.amin", "aten.var", "aten.std", "aten.prod",
    "aten.any", "aten.all", "aten.logsumexp", "aten.norm", "aten.linalg_vector_norm", "aten.nansum",
    "aten.max", "aten.min", "aten.argmax", "aten.argmin", "aten.var_mean", "aten.std_mean",
    "aten.count_nonzero",
)
def reduce(tr, node, *args, **kwargs):
    a = bind(node, args, kwargs)
    x = a["self"]
    name = op_key(node.target).split(".")[1]
    dims = _dims(x, a.get("dim"))
    keepdim = bool(a.get("keepdim") or False)
    if name not in EXACT:
        tr.annotate("normalized", terms=[x.axes[d] for d in dims], op=name)
    if keepdim:
        axes = [ONE if d in dims else t for d, t in enumerate(x.axes)]
    else:
        axes = [t for d, t in enumerate(x.axes) if d not in dims]
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):  # max.dim -> (values, indices), var_mean -> (var, mean)
        return tuple(TensorInfo(tuple(v.shape), tuple(axes)) for v in val)
    return TensorInfo(tr.out_shape(node), tuple(axes))


@register("aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax", "aten.special_softmax")
def softmax(tr, node, x, dim, *args, **kwargs):
    tr.annotate("normalized", terms=[x.axes[dim % x.ndim]], op="softmax")
    return TensorInfo(x.shape, x.axes)


@register("aten.cumsum", "aten.cumprod", "aten.cummax", "aten.cummin", "aten.logcumsumexp")
def cumulative(tr, node, x, dim, *args, **kwargs):
    """Positional along ``dim``: that axis is frozen, the others pass through."""
    freeze(x.axes[dim % x.ndim])
    val = node.meta["val"]
    if isinstance(val, (tuple, list)):
        return tuple(TensorInfo(tuple(v.shape), x.axes) for v in val)
    return TensorInfo(x.shape, x.axes)


def _norm(tr, x, normalized_shape, weight=None, bias=None):
    k = len(normalized_shape)
    for p in (weight, bias):
        if isinstance(p, TensorInfo):
            for a, b in zip(x.axes[-k:], p.axes):
                tr.unify(a, b)
    tr.annotate("normalized", terms=list(x.axes[-k:]), op="norm")
    return TensorInfo(x.shape, x.axes)


@register("aten.layer_norm")
def layer_norm(tr, node, x, normalized_shape, weight=None, bias=None, *args, **kwargs):
    return _norm(tr, x, normalized_shape, weight, bias)


@register("aten.native_layer_norm")
def native_layer_norm(tr, node, x, normalized_shape, weight=None, bias=None, *args, **kwargs):
    out = _norm(tr, x, normalized_shape, weight, bias)
    stats = tuple(ONE for _ in normalized_shape)
    stat = TensorInfo(tr.out_shape(node, 1), x.axes[: -len(normalized_shape)] + stats)
    return out, stat, stat


@register("aten.rms_norm")
def rms_norm(tr, node, x, normalized_shape, weight=None, *args, **kwargs):
    return _norm(tr, x, normalized_shape, weight, None)
