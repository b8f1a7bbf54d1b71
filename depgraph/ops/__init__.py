"""ATen op handlers for the tracer; importing this package registers them all."""

from . import creation, indexing, linalg, pointwise, reduction, shape  # noqa: F401
from .registry import HANDLERS, TensorInfo, UnsupportedOpError, lookup, op_key, register, unsupported

__all__ = ["HANDLERS", "TensorInfo", "UnsupportedOpError", "lookup", "op_key", "register", "unsupported"]
