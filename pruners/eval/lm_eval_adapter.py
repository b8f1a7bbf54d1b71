"""Optional bridge to lm-evaluation-harness: run its tasks on an (e.g. pruned) in-memory model.

Installed separately (``pip install lm-eval``); depprune never requires it.
"""

from __future__ import annotations

from torch import nn


def run_lm_eval(model: nn.Module, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 1) -> dict:
    """``{task: {metric: value}}`` from ``lm_eval.simple_evaluate`` on ``model``."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise ImportError("lm-evaluation-harness is not installed: pip install lm-eval") from e
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=tasks, limit=limit)
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))} for task, metrics in out["results"].items()}
