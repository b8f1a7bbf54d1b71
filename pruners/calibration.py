"""Calibration samples: fixed-length token windows drawn (seeded) from a text or Alpaca file.

Text files are split into documents on ``<|endoftext|>`` or blank lines; JSON/JSONL files
with ``instruction``/``input``/``output`` records are rendered with the Alpaca prompt (as in
alpaca-lora and LLM-Pruner).  Each sample is a window of ``seq_len`` tokens, starting with
BOS, cut at a random offset from a random document long enough to hold it (documents are
joined when none is).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}"
)


class CalibrationConfig(BaseModel):
    """Where calibration text comes from and how much of it is used."""

    model_config = ConfigDict(extra="forbid")

    source: Path | None = Field(None, description="text file, or Alpaca-format .json/.jsonl file")
    samples: int = Field(10, ge=1, description="number of calibration sequences")
    seq_len: int = Field(128, ge=2, description="tokens per calibration sequence")
    seed: int = Field(0, description="seed for choosing documents and offsets")


def read_documents(path: str | Path) -> list[str]:
    """Documents of a calibration file (format chosen by extension and content)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".json", ".jsonl"):
        records = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
        if not isinstance(records, list) or not all(isinstance(r, dict) and "instruction" in r for r in records):
            raise ValueError(f"{path}: expected Alpaca records with 'instruction', 'input' and 'output'")
        return [alpaca_prompt(r) for r in records]
    parts = text.split("<|endoftext|>") if "<|endoftext|>" in text else text.split("\n\n")
    return [p.strip() for p in parts if p.strip()]


def alpaca_prompt(record: dict) -> str:
    inp = (record.get("input") or "").strip()
    return ALPACA_PROMPT.format(
        ctx=", paired with an input that provides further context" if inp else "",
        instruction=record["instruction"].strip(),
        input_block=f"### Input:\n{inp}\n\n" if inp else "",
        output=(record.get("output") or "").strip(),
    )


def calibration_samples(config: CalibrationConfig, tokenizer) -> list[torch.Tensor]:
    """``config.samples`` tensors of shape ``(1, seq_len)``, deterministic under ``config.seed``."""
    if config.source is None:
        raise ValueError("calibration needs a source file (CLI: --calibration FILE)")
    docs = read_documents(config.source)
    rng = np.random.default_rng(config.seed)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    encoded = [bos + tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"] for d in docs]
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
