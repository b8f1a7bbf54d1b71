"""Importance estimators (``random``, ``l1``, ``l2``, Taylor, Wanda-sp, FLAP) and aggregations (``sum``, ``mean``, ...)."""

from . import activation, magnitude, random, taylor  # noqa: F401  (registers the built-in estimators)
from .registry import (
    AGGREGATIONS,
    ESTIMATORS,
    Estimator,
    ScoringContext,
    aggregate,
    estimator_config,
    load_plugins,
    make_estimator,
    member_reduce,
    needs_of,
    register_aggregation,
    register_estimator,
    unit_scores,
    unit_sums,
)
from .signals import Signals, collect_signals

__all__ = [
    "AGGREGATIONS", "ESTIMATORS", "Estimator", "ScoringContext", "aggregate", "estimator_config", "load_plugins", "make_estimator",
    "member_reduce", "needs_of", "register_aggregation", "register_estimator", "unit_scores", "unit_sums",
    "Signals", "collect_signals",
]
