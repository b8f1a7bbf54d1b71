"""depgraph: trace a causal LM into a dependency graph of prunable dimensions and find coupled groups."""

from .tracer import Trace, TraceError, UnsupportedOpError, meta_copy, trace

__all__ = ["Trace", "TraceError", "UnsupportedOpError", "meta_copy", "trace"]
