"""Shape ops: views and reshapes split or merge factors, slices and concatenations cut them."""

from __future__ import annotations

from ..layout import ONE, Cat, Factor, Prod, freeze
from .registry import TensorInfo, bind, register


def reshape_axes(tr, x: TensorInfo, shape: tuple[int, ...]) -> tuple:
    """Row-major reshape: group input and output axes whose sizes multiply to the same number.

    ``(B, T, 512) -> (B, T, 8, 64)`` maps the last input axis to ``Prod(F8, F64)``, refining
    the input's factor; ``(B, 8, T, 64) -> (B, T, 512)`` after a transpose merges two axes.
    """
    ins = [(s, t) for s, t in zip(x.shape, x.axes) if s != 1]
    outs = [i for i, s in enumerate(shape) if s != 1]
    axes: list = [ONE] * len(shape)
    i = j = 0
    while i < len(ins) and j < len(outs):
        group_in, group_out = [ins[i][1]], [outs[j]]
        pin, pout = ins[i][0], shape[outs[j]]
        i, j = i + 1, j + 1
        while pin != pout:
            if pin < pout and i < len(ins):
                pin *= ins[i][0]
                group_in.append(ins[i][1])
                i += 1
            elif pout < pin and j < len(outs):
                pout *= shape[outs[j]]
                group_out.append(outs[j])
                j += 1
            else:
                raise ValueError(f"reshape of {x.shape} to {shape} does not preserve the element count")
        src = Prod(tuple(group_in))
        if len(group_out) == 1:
            axes[group_out[0]] = src
        else:
            new = [Factor(shape[k], "view") for k in group_out]
            tr.unify(src, Prod(tuple(new)))
            for k, f in zip(group_out, new):
                axes[k] = f
    return tuple(axes)


@register("aten.view", "aten.reshape", "aten._unsafe_view", "aten.flatten", "aten.unflatten",
          "aten.view_as", "aten.reshape_as", "aten._reshape_alias")
def view(tr, node, x, *args, **kwargs):
    shape = tr.out_shape(node)
    return TensorInfo(shape, reshape_axes(tr, x, shape))


@register("aten.expand", "aten.expand_as", "aten.broadcast_to")
def expand(tr, node, x, *args, **kwargs):
    """A size-1 axis expanded to ``n`` is a new index space: copies, coupled to nothing upstream."""
    shape = tr.out_shape(node)
    lead = len(shape) - x.ndim
    axes = []
    for k, n in enumerate(shape):
        src = k - lead
        if src >= 0 and x.shape[src] == n:
            axes.append(x.axes[src])
        else:
            axes.append(tr.axis(n, "expand"))
    return TensorInfo(shape, tuple(axes))


@register("aten.repeat")
def repeat(tr, node, x, repeats, *args, **kwargs):
    """Tiling: axis ``k`` becomes ``Prod(copies, original)``."""
    shape = tr.out_shape(node)
    lead = len(shape) - x.ndim
    axes = []
    for k, n in enumerate(shape):
        src = k - lead
        r = repeats[k]
        if src < 0:
            axes.append(tr.axis(n, "expand"))
        elif r == 1:
            axes.append(x.axes[src])
        else:
            axes.append(Prod((tr.axis(r, "expand"), x.axes[src])))
    return TensorInfo(shape, tuple(axes))


@register("aten.repeat_interleave.self_int")
def repeat_interleave(tr, node, x, repeats, dim=None, *args, **kwargs):
    shape = tr.out_shape(node)
    if dim is None:
        freeze(*x.axes)
        return tr.fresh(shape, "conflict")
    d = dim % x.ndim
    axes = list(x.axes)
    axes[d] = Prod((x.axes[d], tr.axis(repeats, "expand")))
    return TensorInfo(shape, tuple(axes))


@register("aten.permute")
def permute(tr, node, x, dims, *args, **kwargs):
    return TensorInfo(tr.out_shape(node), tuple(x.axes[d % x.ndim] for d in dims))


@register("aten.transpose", "aten.swapaxes", "aten.swapdims")
def transpose(tr, node, x, d0, d1, *args, **kwargs):
    axes = list(x.axes)
    d0, d1 = d0 % x.ndim, d1 % x.ndim
    axes[d0], axes[d1] = axes[d1], axes[d0]
    return TensorInfo(tr.out_shape(node), tuple(axes))


@register("aten.t", "aten.numpy_T")
def t(tr, node, x, *args, **kwargs):
    return TensorInfo(tr.out_shape(node), tuple(reversed(x.axes)))


@register("aten.movedim")
def movedim(tr, node, x, source, destination, *args, **kwargs):
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    src = [s % x.ndim for s in src]
    dst = [d % x.ndim for d in dst]
    rest = iter([k for k in range(x.ndim) if k not in src])
    order = [None] * x.ndim
    for s, d in zip(src, dst):
        order[d] = s
    order = [o if o is not None else next(rest) for o in order]
    return TensorInfo(tr.out_shape(node), tuple(x.axes[o] for o in order))


@register("aten.unsqueeze", "aten.squeeze")
def squeeze_like(tr, node, x, *args, **kwargs):
    """Only size-1 axes come or go; they carry no index space."""
    shape = tr.out_shape(node)
    kept = iter(t for s, t in zip(x.shape, x.axes) if s != 1)
    return TensorInfo(shape, tuple(ONE if s == 1 else next(kept) for s in shape))


def _slice_term(tr, term, size, start, end, step):
    start = 0 if start is None else (start + size if start < 0 else start)
    end = size if end is None else (end + size if end < 0 else end)
    start, end = max(0, min(start, size)), max(0, min(end, size))
    if step == 1:
        if end <= start:
            return ONE if end == start + 1 else Factor(0, "empty")
        n = end - start
        return ONE if n == 1 else tr.cut(term, start, end)
    # strided: positions start, start+step, ... as the outer factor of Prod(outer, step)
    if size % step == 0 and start < step and end > size - step:
        outer, inner = Factor(size // step, "view"), Factor(step, "view")
        tr.unify(term, Prod((outer, inner)))
        freeze(inner)  # a fixed index inside the stride is pinned
        return outer
    freeze(term)
    f = Factor(len(range(start, end, step)), "conflict")
    f.frozen = True
    return f


@register("aten.slice")
def slice_(tr, node, x, dim=0, start=None, end=None, step=1):
    d = dim % x.ndim
    axes = list(x.axes)
    axes[d] = _slice_term(tr, x.axes[d], x.shape[d], start, end, step)
    return TensorInfo(tr.out_shape(node), tuple(axes))


@register("aten.narrow")
def narrow(tr, node, x, dim, start, length):
    return slice_(tr, node, x, dim, start, start + length)


@register("aten.select")
def select(tr, node, x, dim, index):
    """Picking one fixed index pins that axis: it can never be pruned."""
    d = dim % x.ndim
    freeze(x.axes[d])
    return TensorInfo(tr.out_shape(node), x.axes[:d] + x.axes[d + 1 :])


@register("aten.unbind")
def unbind(tr, node, x, dim=0):
    d = dim % x.ndim
    freeze(x.axes[d])
    axes = x.axes[:d] + x.axes[d + 1 :]
    return tuple(TensorInfo(tuple(v.shape), axes) for v in node.meta["val"])


def _pieces(tr, node, x, d, sizes):
    out, offset = [], 0
    for v, n in zip(node.meta["val"], sizes):
        axes = list(x.axes)
        axes[d] = _slice_term(tr, x.axes[d], x.shape[d], offset, offset + n, 1)
        out.append(TensorInfo(tuple(v.shape), tuple(axes)))
        offset += n
    return tuple(out)


@register("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.tensor_split.sections")
def split(tr, node, *args, **kwargs):
    a = bind(node, args, kwargs)
    x = a["self"]
    d = (a.get("dim") or 0) % x.ndim
    sizes = [int(v.shape[d]) for v in node.meta["val"]]
    return _pieces(tr, node, x, d, sizes)


@register("aten.cat", "aten.concat", "aten.concatenate")
def cat(tr, node, tensors, dim=0):
    """The output axis is the concatenation of the inputs' axes; the other axes are shared."""
    tensors = [t for t in tensors if isinstance(t, TensorInfo)]
    shape = tr.out_shape(node)
    d = dim % len(shape)
    live = [t for t in tensors if t.ndim == len(shape) and t.shape[d] > 0]
    axes = []
    for k in range(len(shape)):
        if k == d:
            axes.append(Cat(tuple(t.axes[d] for t in live)) if shape[d] != 1 else ONE)
        else:
            axes.append(tr.broadcast([TensorInfo((t.shape[k],), (t.axes[k],)) for t in live], (shape[k],))[0])
    return TensorInfo(shape, tuple(axes))


@register("aten.stack")
def stack(tr, node, tensors, dim=0):
    shape = tr.out_shape(node)
    d = dim % len(shape)
    first = tensors[0]
    others = [t for t in tensors if isinstance(t, TensorInfo)]
    rest = tr.broadcast(others, first.shape)
    new = tr.axis(shape[d], "stack")
    freeze(new)
    return TensorInfo(shape, rest[:d] + (new,) + rest[d:])


@register("aten.flip", "aten.roll", "aten.triu", "aten.tril", "aten.rot90")
def positional(tr, node, x, *args, **kwargs):
    """Ops that move data by position: the axes they act on are frozen."""
    a = bind(node, (x,) + args, kwargs)
    name = node.target._name.split("::")[1].split(".")[0]
    if name in ("triu", "tril"):
        dims = [x.ndim - 2, x.ndim - 1]
    else:
        dims = a.get("dims") or a.get("dim") or list(range(x.ndim))
        dims = [dims] if isinstance(dims, int) else list(dims)
    for k in dims:
        freeze(x.axes[k % x.ndim])
    return TensorInfo(tr.out_shape(node), x.axes)


__all__ = ["reshape_axes"]
