"""Calibration samples: fixed-length token windows drawn (seeded) from a text or Alpaca file.

The file is read by :func:`pruners.io.documents.read_documents`: text files are split into
documents on ``<|endoftext|>`` or blank lines; JSON/JSONL files with ``instruction``/``input``/
``output`` records are rendered with the Alpaca prompt (as in alpaca-lora and LLM-Pruner).  Each sample is a window of ``seq_len`` tokens, starting with
BOS, cut at a random offset from a random document long enough to hold it (documents are
joined when none is).

Every file is validated as it is read: :func:`read_documents` (and :func:`check_calibration_file`,
which needs no tokenizer) raise :class:`~pruners.errors.InputFileError`, one line naming the file
and the record or line, for a file that is missing, a directory, empty, binary or not UTF-8, JSON
that does not parse, and records that are not Alpaca records.  :func:`calibration_samples` also
refuses a file with fewer than ``samples * seq_len`` tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import CalibrationConfig
from ..errors import UsageError
from ..io.documents import WHAT, read_documents
from ..io.text_input import file_error

__all__ = ["calibration_samples", "check_calibration_file", "read_documents"]


def check_calibration_file(path: str | Path) -> int:
    """The number of documents in a calibration file; validates it without a tokenizer (before anything is loaded)."""
    return len(read_documents(path))


def calibration_samples(config: CalibrationConfig, tokenizer, seed: int = 0) -> list[torch.Tensor]:
    """``config.samples`` tensors of shape ``(1, seq_len)``, deterministic under ``seed``.

    Raises :class:`~pruners.errors.InputFileError` for a file :func:`read_documents` refuses, or
    one holding fewer than ``samples * seq_len`` tokens (BOS included); UsageError without a source.
    """
    if config.source is None:
        raise UsageError("calibration needs a source file (CLI: --calibration FILE)")
    docs = read_documents(config.source)
    rng = np.random.default_rng(seed)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = [bos + tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"] for d in docs]
    total, need = sum(len(ids) for ids in encoded), config.samples * config.seq_len
    if need > total:
        most = total // config.seq_len
        short = f" (fewer than seq_len={config.seq_len})" if most == 0 else ""
        raise file_error(
            config.source, WHAT,
            f"holds {total} tokens: at most {most} samples of seq_len {config.seq_len}{short}, but {config.samples} were "
            f"asked for ({config.samples} x {config.seq_len} = {need} tokens); give a longer file, fewer samples or a shorter seq_len",
        )
    long_enough = [ids for ids in encoded if len(ids) >= config.seq_len]
    if not long_enough:  # short documents: one stream, windows anywhere
        stream = [t for ids in encoded for t in ids]
        if len(stream) < config.seq_len:
            raise ValueError(f"{config.source} holds {len(stream)} tokens, fewer than seq_len={config.seq_len}")
        long_enough = [stream]
    out = []
    for _ in range(config.samples):
        ids = long_enough[rng.integers(len(long_enough))]
        start = int(rng.integers(len(ids) - config.seq_len + 1))
        out.append(torch.tensor([ids[start : start + config.seq_len]], dtype=torch.long))
    return out
