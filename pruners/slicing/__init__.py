"""Slicing: remove planned units from a copy of the model (:func:`execute`), keep its size attributes true,
and the same plans as masks or learnable gates on the dense model (:mod:`pruners.slicing.masks`)."""

from .attributes import AttributeInferenceError, register_shape_adapter
from .executor import PruneRecord, execute

__all__ = ["AttributeInferenceError", "PruneRecord", "execute", "register_shape_adapter"]
