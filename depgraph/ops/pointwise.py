"""Element-wise ops: every aligned axis of equal size is one index space (broadcasting aside)."""

from __future__ import annotations

from .registry import TensorInfo, register, unsupported

UNARY = [
    "aten.neg", "aten.abs", "aten.exp", "aten.log", "aten.log1p", "aten.expm1", "aten.sqrt", "aten.rsqrt",
    "aten.sin", "aten.cos", "aten.tanh", "aten.sigmoid", "aten.silu", "aten.gelu", "aten.relu", "aten.relu6",
    "aten.erf", "aten.reciprocal", "aten.square", "aten.sign", "aten.floor", "aten.ceil", "aten.round",
    "aten.clamp", "aten.clamp_min", "aten.clamp_max", "aten.hardtanh", "aten.leaky_relu", "aten.elu",
    "aten.softplus", "aten.mish", "aten.hardswish", "aten.hardsigmoid", "aten.logical_not",
    "aten.bitwise_not", "aten.nan_to_num", "aten.clone", "aten.contiguous", "aten.alias", "aten.detach",
    "aten.lift_fresh_copy", "aten.to", "aten._to_copy", "aten.dropout", "aten.feature_dropout",
    "aten.alpha_dropout", "aten.type_as", "aten.fill", "aten.zero", "aten.pow.Tensor_Scalar",
    "aten.isinf", "aten.isnan", "aten.logit", "aten.gelu_", "aten.silu_", "aten.relu_",
]

BINARY = [
    "aten.add", "aten.sub", "aten.rsub", "aten.mul", "aten.div", "aten.pow.Tensor_Tensor",
    "aten.pow.Scalar", "aten.maximum", "aten.minimum", "aten.where", "aten.masked_fill", "aten.eq",
    "aten.ne", "aten.lt", "aten.le", "aten.gt", "aten.ge", "aten.__and__", "aten.__or__", "aten.__xor__",
    "aten.bitwise_and", "aten.bitwise_or", "aten.bitwise_xor", "aten.logical_and", "aten.logical_or",
    "aten.logical_xor", "aten.lerp", "aten.addcmul", "aten.addcdiv", "aten.fmod", "aten.remainder",
    "aten.floor_divide", "aten.atan2", "aten.copy", "aten.add_", "aten.mul_", "aten.copy_",
]


@register(*UNARY)
def unary(tr, node, x, *args, **kwargs):
    """One tensor in, the same layout out (extra tensor arguments, e.g. ``type_as``, are ignored)."""
    if not isinstance(x, TensorInfo):  # e.g. pow.Scalar with a Python base
        return tr.fresh(tr.out_shape(node), "const")
    return TensorInfo(tr.out_shape(node), tr.broadcast([x], tr.out_shape(node)))


@register(*BINARY)
def broadcasting(tr, node, *args, **kwargs):
    """All tensor arguments broadcast against the output shape."""
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, TensorInfo)]
    shape = tr.out_shape(node)
    return TensorInfo(shape, tr.broadcast(tensors, shape))


@register("aten.prelu", "aten._prelu_kernel")
def prelu(tr, node, x, weight):
    """``max(0, x) + w * min(0, x)``: a per-channel ``w`` (``nn.PReLU(num_parameters=C)``) is indexed by
    axis 1 of ``x`` (axis 0 of a 1-D ``x``) and is coupled to it; a single ``w`` is shared by every channel.
    """
    shape = tr.out_shape(node)
    if weight.shape in ((), (1,)):
        return TensorInfo(shape, tr.broadcast([x], shape))
    channel = 1 if x.ndim >= 2 else 0
    if weight.ndim != 1 or x.ndim == 0 or weight.shape[0] != x.shape[channel]:
        raise unsupported(node, f"a PReLU weight of shape {weight.shape} for an input of shape {x.shape}")
    tr.unify(x.axes[channel], weight.axes[0])
    return TensorInfo(shape, tr.broadcast([x], shape))
