"""Tensor factories, assertions, tuple access and higher-order wrappers."""

from __future__ import annotations

from ..layout import freeze
from .registry import TensorInfo, register

FACTORIES = [
    "aten.full", "aten.zeros", "aten.ones", "aten.empty", "aten.scalar_tensor",
    "aten.new_ones", "aten.new_zeros", "aten.new_full", "aten.new_empty", "aten.zeros_like",
    "aten.ones_like", "aten.full_like", "aten.empty_like", "aten.tensor", "aten.empty_strided",
    "aten.empty_permuted", "aten.lift_fresh",
]

# factories whose value at a position depends on the position (or on a random draw per position)
POSITIONAL_FACTORIES = [
    "aten.arange", "aten.linspace", "aten.rand", "aten.randn", "aten.randint", "aten.rand_like",
    "aten.randn_like", "aten.bernoulli",
]


@register(*FACTORIES)
def factory(tr, node, *args, **kwargs):
    """A new tensor whose values do not depend on any traced index space."""
    return tr.fresh(tr.out_shape(node), "const")


@register(*POSITIONAL_FACTORIES)
def positional_factory(tr, node, *args, **kwargs):
    """A new tensor whose values differ per position, e.g. ``arange``: its axes are frozen.

    Removing an index space coupled to them would shift the values the kept positions get
    (Bloom's ALiBi slopes are ``base ** arange(1, heads + 1)``: pruning heads would give the kept
    heads other slopes), so such an index space is never pruned.
    """
    info = tr.fresh(tr.out_shape(node), "const")
    freeze(*info.axes)
    return info


@register(
    "aten._assert_tensor_metadata", "aten._assert_scalar", "aten._assert_async",
    "aten.sym_constrain_range", "aten.sym_constrain_range_for_size", "aten._print",
    "_assert_scalar", "_assert_tensor_metadata",
)
def assertion(tr, node, *args, **kwargs):
    return None


@register("aten.sym_size", "aten.sym_numel", "aten.sym_stride", "aten._local_scalar_dense", "aten.item")
def scalar(tr, node, *args, **kwargs):
    return node.meta.get("val")


@register("getitem")
def getitem(tr, node, seq, index):
    return seq[index]


@register("wrap_with_set_grad_enabled")
def set_grad(tr, node, enabled, submod, *args):
    """``with torch.no_grad():`` regions are exported as sub-graphs: interpret them in place."""
    return tr.run_graph(submod.graph, list(args), submod)


@register("wrap_with_autocast")
def autocast(tr, node, device, dtype, enabled, cache, submod, *args):
    return tr.run_graph(submod.graph, list(args), submod)


@register("aten.diff")
def diff(tr, node, x, n=1, dim=-1, prepend=None, append=None):
    """Differences along ``dim`` are positional: that axis is frozen."""
    freeze(x.axes[dim % x.ndim])
    shape = tr.out_shape(node)
    axes = list(x.axes)
    axes[dim % x.ndim] = tr.axis(shape[dim % x.ndim], "conflict")
    freeze(axes[dim % x.ndim])
    return TensorInfo(shape, tuple(axes))
