"""What a recovery run leaves beside its model: the JSON log and the loss-curve PNG.

- ``recovery_log.json``: the config, the data summary, one entry per optimiser step (loss,
  learning rate, tokens, seconds) and one per evaluation (validation loss and perplexity).
- ``recovery_loss.png``: training loss per step and validation loss at each evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

from pruners.cli.arguments import strict_json

LOG = "recovery_log.json"
PLOT = "recovery_loss.png"


def write_log(directory: Path, config: dict, result) -> Path:
    """Write ``recovery_log.json`` (standard JSON: a non-finite loss is written as its name)."""
    path = Path(directory) / LOG
    body = {"config": config, "summary": result.summary(), "history": result.history, "validation": result.validation}
    path.write_text(json.dumps(strict_json(body), indent=1) + "\n", encoding="utf-8")
    return path


def plot_losses(directory: Path, result, title: str) -> Path:
    """Write ``recovery_loss.png``: the training loss per step and the validation loss, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(directory) / PLOT
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        ax.plot([h["step"] for h in result.history], [h["loss"] for h in result.history], lw=0.8, label="training loss")
        ax.plot([v["step"] for v in result.validation], [v["loss"] for v in result.validation], "o-", label="validation loss")
        ax.axvline(result.best_step, color="grey", ls=":", lw=1, label=f"weights kept (step {result.best_step})")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})  # no version stamp: same run, same bytes
    finally:
        plt.close(fig)
    return path

