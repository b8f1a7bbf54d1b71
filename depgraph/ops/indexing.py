"""Indexing by tensors: the indexed axes are pinned (frozen); the index tensors' axes flow on."""

from __future__ import annotations

from ..layout import freeze
from .registry import TensorInfo, register


@register("aten.index.Tensor", "aten._unsafe_index.Tensor")
def index(tr, node, x, indices):
    """Advanced indexing ``x[i0, i1, ...]`` (``None`` keeps an axis)."""
    shape = tr.out_shape(node)
    idx = [(k, i) for k, i in enumerate(indices) if i is not None]
    for k, _ in idx:
        freeze(x.axes[k])
    tensors = [i for _, i in idx if isinstance(i, TensorInfo)]
    bshape = shape
    nb = max((t.ndim for t in tensors), default=0)
    positions = [k for k, _ in idx]
    contiguous = positions == list(range(positions[0], positions[-1] + 1)) if positions else True
    start = positions[0] if contiguous and positions else 0
    bshape = shape[start : start + nb]
    bcast = tr.broadcast(tensors, bshape)
    kept = [t for k, t in enumerate(x.axes) if k not in positions]
    if contiguous:
        axes = tuple(kept[:start]) + bcast + tuple(kept[start:])
    else:
        axes = bcast + tuple(kept)
    if len(axes) != len(shape):
        freeze(*x.axes)
        return tr.fresh(shape, "conflict")
    return TensorInfo(shape, axes)


@register("aten.index_select")
def index_select(tr, node, x, dim, index):
    d = dim % x.ndim
    freeze(x.axes[d])
    axes = list(x.axes)
    axes[d] = index.axes[0] if index.ndim else tr.axis(1)
    return TensorInfo(tr.out_shape(node), tuple(axes))


@register("aten.gather")
def gather(tr, node, x, dim, index, *args, **kwargs):
    d = dim % x.ndim
    freeze(x.axes[d])
    for k in range(x.ndim):
        if k != d and x.shape[k] == index.shape[k] and x.shape[k] != 1:
            tr.unify(x.axes[k], index.axes[k])
    return TensorInfo(tr.out_shape(node), index.axes)


@register("aten.topk", "aten.sort")
def topk(tr, node, x, *args, **kwargs):
    dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
    if node.target._name.endswith("sort"):
        dim = kwargs.get("dim", args[0] if args else -1)
    d = dim % x.ndim
    freeze(x.axes[d])
    vals = node.meta["val"]
    return tuple(TensorInfo(tuple(v.shape), x.axes[:d] + (tr.axis(v.shape[d], "conflict"),) + x.axes[d + 1 :]) for v in vals)
