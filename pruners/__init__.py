"""depprune's public Python API: structured pruning of causal language models, one step or step by step.

The data flows one way -- trace -> groups -> scores -> plan -> slice -> save::

    from pruners import PruneConfig, load_model, load_pruned, prune, save_pruned

    model = load_model("../shared/models/stories260K")
    result = prune(model, PruneConfig(ratio=0.2, importance="l2"))
    save_pruned(result.model, "out/pruned", result.record, source="../shared/models/stories260K")
    pruned, record = load_pruned("out/pruned")

Step by step: :func:`analyze` (trace and groups), :func:`score_groups`, :func:`make_plan`,
:func:`execute`; a plan as masks or learnable gates on the dense model: :func:`masked_copy`,
:func:`removed_positions`, :func:`attach_gates`.  Every name here is imported on first use,
so ``import pruners`` (and the command line) starts without loading torch.

>>> import pruners
>>> sorted(set(pruners.__all__) - set(dir(pruners)))
[]
>>> pruners.PruneConfig(ratio=0.2).kinds
['attention', 'mlp_channel']
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # configuration (one module)
    "PruneConfig": "config",
    "RunConfig": "config",
    "PlannerConfig": "config",
    "CalibrationConfig": "config",
    "KIND_NAMES": "config",
    "read_run_file": "config",
    # one call, or its steps
    "prune": "pipeline",
    "PruneResult": "pipeline",
    "analyze": "pipeline",
    "score_groups": "pipeline",
    "member_scores": "pipeline",
    "group_signals": "pipeline",
    "count_params": "pipeline",
    "calibration_samples": "importance.calibration",
    "make_plan": "planner",
    "select_groups": "planner",
    "Plan": "planner",
    "plan_of": "planner",
    "execute": "slicing.executor",
    "PruneRecord": "slicing.executor",
    "register_shape_adapter": "slicing.attributes",
    # the plan on the dense model
    "removed_positions": "slicing.masks",
    "masked_copy": "slicing.masks",
    "attach_gates": "slicing.masks",
    "attach_gate_source": "slicing.masks",
    "remove_gates": "slicing.masks",
    # files
    "load_model": "io.checkpoint",
    "load_pruned": "io.checkpoint",
    "load_tokenizer": "io.checkpoint",
    "save_pruned": "io.checkpoint",
    "write_pruned": "io.checkpoint",
    "weights_dtype": "io.checkpoint",
    "read_run": "io.checkpoint",
    "OutputDir": "io.output_dir",
    "read_documents": "io.documents",
    "read_alpaca": "io.documents",
    "alpaca_prompt": "io.documents",
    "is_alpaca_file": "io.documents",
    "register_method": "methods",
    "METHODS": "methods",
    "MethodFlag": "methods",
    "method_options": "methods",
    # evaluation
    "perplexity": "eval.perplexity",
    "check_text_file": "eval.perplexity",
    "zero_shot": "eval.multiple_choice",
    "read_piqa": "eval.multiple_choice",
    "read_openbookqa": "eval.multiple_choice",
    "generation_speed": "eval.speed",
    "speed_in_own_process": "eval.speed",
    # plugins
    "register_estimator": "importance.registry",
    "register_aggregation": "importance.registry",
    "aggregate": "importance.registry",
    "make_estimator": "importance.registry",
    "needs_of": "importance.registry",
    "collect_signals": "importance.signals",
    "ESTIMATORS": "importance.registry",
    "AGGREGATIONS": "importance.registry",
    "DeppruneError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pruners' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
