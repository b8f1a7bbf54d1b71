"""Importance estimators (``random``, ``l1``, ``l2``, ...) and group aggregations (``sum``, ``mean``, ...)."""

from . import magnitude, random  # noqa: F401  (registers the built-in estimators)
from .registry import (
    AGGREGATIONS,
    ESTIMATORS,
    Estimator,
    ScoringContext,
    aggregate,
    make_estimator,
    member_reduce,
    register_aggregation,
    register_estimator,
    unit_scores,
)

__all__ = [
    "AGGREGATIONS", "ESTIMATORS", "Estimator", "ScoringContext", "aggregate", "make_estimator",
    "member_reduce", "register_aggregation", "register_estimator", "unit_scores",
]
