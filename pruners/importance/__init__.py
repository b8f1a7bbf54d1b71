"""Importance estimators (``random``, ``l1``, ``l2``, Taylor, Wanda-sp, FLAP) and aggregations (``sum``, ``mean``, ...)."""

from . import activation, magnitude, random, taylor  # noqa: F401  (registers the built-in estimators)
from .registry import (
    AGGREGATIONS,
    ESTIMATORS,
    Estimator,
    ScoringContext,
    aggregate,
    estimator_name,
    load_plugins,
    make_estimator,
    member_reduce,
    needs_of,
    parse_option,
    parse_options,
    register_aggregation,
    register_estimator,
    unit_scores,
    unit_sums,
    validate_options,
)
from .signals import Signals, collect_signals

__all__ = [
    "AGGREGATIONS", "ESTIMATORS", "Estimator", "ScoringContext", "aggregate", "estimator_name", "load_plugins",
    "make_estimator", "member_reduce", "needs_of", "parse_option", "parse_options", "register_aggregation",
    "register_estimator", "unit_scores", "unit_sums", "validate_options",
    "Signals", "collect_signals",
]
