"""Learned structured pruning (issue 11, in progress): hard-concrete gates on the traced groups.

Built so far: :mod:`learned.hard_concrete` (the gate distribution), :mod:`learned.expected_size`
(the differentiable expected parameter count of a gated model) and :mod:`learned.gates` (the
gates on the model, through :func:`pruners.attach_gate_source`) and :mod:`learned.lagrangian`
(the size constraint).  The training method, export and
CLI are not written yet.  This package sits after ``recovery`` on the data path: it may import
``pruners`` (public API) and ``recovery``; neither imports it.
"""
