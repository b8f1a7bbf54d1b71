"""Resumable training checkpoints, written atomically beside the output directory.

A run's checkpoints live in ``.{out}.depprune-checkpoints/`` next to ``out`` (``out`` itself is
written only once, whole, when training ends).  Each checkpoint is a directory
``step-00000040/`` holding ``state.pt``: the trained tensors, the optimiser and schedule, the
random-number state, the position in the data and the logs so far -- all a resumed run needs to
end with the same weights as an uninterrupted one.  A checkpoint is written under a temporary
name and renamed into place, so a kill leaves either the old or the new one, never half of
one; only the newest is kept.  ``state.pt`` is read back with ``torch.load(weights_only=True)``,
which unpickles tensors and plain containers only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from pruners.errors import UsageError

STATE = "state.pt"
PREFIX = "step-"


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """Where the checkpoints of a run writing ``out`` live: a hidden directory beside it.

    >>> checkpoint_dir("runs/recovered").as_posix()
    'runs/.recovered.depprune-checkpoints'
    """
    out = Path(out)
    return out.parent / f".{out.name}.depprune-checkpoints"


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint in ``directory`` (None when there is none)."""
    if not directory.is_dir():
        return None
    steps = sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX) and (p / STATE).is_file())
    return steps[-1] if steps else None


def save(directory: Path, step: int, state: dict) -> Path:
    """Write ``state`` as the checkpoint of ``step`` (atomically), then drop the older ones."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    try:
        with open(tmp / STATE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        final = directory / f"{PREFIX}{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for old in directory.iterdir():
        if old != final:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    return final


def load(path: Path, config: dict) -> dict:
    """The state saved at ``path``; UsageError when it was written by a run with another configuration.

    ``config`` is the resuming run's recovery config, flattened (``{"train.lr": 0.002, ...}``);
    every option that changes the result must match, the run's length too (it shapes the cosine
    schedule).  Only ``train.save_every`` may differ.
    """
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    saved = json.loads(state["config"])
    differ = sorted(k for k in set(saved) | set(config) if k != "train.save_every" and saved.get(k) != config.get(k))
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} (now {config.get(k)!r})" for k in differ[:4])
        raise UsageError(
            f"--resume: the checkpoint in {path.parent} was written with other options: {shown}; "
            "resume with the same options, or pass --force to start over"
        )
    return state


def remove(directory: Path) -> None:
    """Remove a run's checkpoints (after its output has been written)."""
    if directory.is_dir():
        shutil.rmtree(directory)
