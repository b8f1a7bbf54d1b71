"""Calibration samples: fixed-length token windows drawn (seeded) from a text or Alpaca file.

Text files are split into documents on ``<|endoftext|>`` or blank lines; JSON/JSONL files
with ``instruction``/``input``/``output`` records are rendered with the Alpaca prompt (as in
alpaca-lora and LLM-Pruner).  Each sample is a window of ``seq_len`` tokens, starting with
BOS, cut at a random offset from a random document long enough to hold it (documents are
joined when none is).

Every file is validated as it is read: :func:`read_documents` (and :func:`check_calibration_file`,
which needs no tokenizer) raise :class:`~pruners.errors.InputFileError`, one line naming the file
and the record or line, for a file that is missing, a directory, empty, binary or not UTF-8, JSON
that does not parse, and records that are not Alpaca records.  :func:`calibration_samples` also
refuses a file with fewer than ``samples * seq_len`` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import CalibrationConfig
from ..errors import UsageError
from ..io.text_input import file_error, is_text, json_error, json_type, read_text

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}"
)


WHAT = "calibration file"
ALPACA_RECORD = "Alpaca records: objects with string 'instruction' and 'output' and an optional string 'input'"


def read_documents(path: str | Path) -> list[str]:
    """Documents of a calibration file (format chosen by extension and content).

    Raises :class:`~pruners.errors.InputFileError` (one line) for a file that cannot be used; a
    missing file's error is also a :class:`FileNotFoundError`.
    """
    path = Path(path)
    suffix = path.suffix.lower()  # calib.JSON is JSON too
    if suffix in (".json", ".jsonl"):
        expected = "a JSON list of " + ALPACA_RECORD if suffix == ".json" else "one JSON object per line, " + ALPACA_RECORD
        return [alpaca_prompt(r) for r in _alpaca_records(path, read_text(path, WHAT, expected))]
    text = read_text(path, WHAT)
    parts = text.split("<|endoftext|>") if "<|endoftext|>" in text else text.split("\n\n")
    docs = [p.strip() for p in parts if p.strip()]
    if not docs:
        raise file_error(path, WHAT, "holds no documents, only <|endoftext|> separators; expected UTF-8 text")
    return docs


def check_calibration_file(path: str | Path) -> int:
    """The number of documents in a calibration file; validates it without a tokenizer (before anything is loaded)."""
    return len(read_documents(path))


def _alpaca_records(path: Path, text: str) -> list[dict]:
    """The records of an Alpaca ``.json`` (a list) or ``.jsonl`` (an object per line) text, each checked."""
    records: list = []
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            where = f"line {lineno} (record [{len(records)}])"
            try:
                records.append(json.loads(line))
            except (ValueError, RecursionError) as e:
                raise file_error(
                    path, WHAT, f"{where} does not parse as JSON: {json_error(e)}; expected one JSON object per line"
                ) from None
            _check_alpaca_record(path, where, records[-1])
    else:
        try:
            records = json.loads(text)
        except (ValueError, RecursionError) as e:
            hint = " (one record per line? then name the file .jsonl)" if str(e).startswith("Extra data") else ""
            raise file_error(
                path, WHAT, f"does not parse as JSON: {json_error(e)}{hint}; expected a JSON list of Alpaca records"
            ) from None
        if not isinstance(records, list):
            raise file_error(path, WHAT, f"expected a JSON list of {ALPACA_RECORD}, got {json_type(records)}")
        for i, record in enumerate(records):
            _check_alpaca_record(path, f"record [{i}]", record)
    if not records:
        raise file_error(path, WHAT, f"holds no records (an empty list); expected {ALPACA_RECORD}")
    return records


def _check_alpaca_record(path: Path, where: str, record) -> None:
    if not isinstance(record, dict):
        raise file_error(path, WHAT, f"{where} is {json_type(record)}, not an object; expected {ALPACA_RECORD}")
    for key in ("instruction", "output"):
        if key not in record:
            raise file_error(path, WHAT, f"{where}: {key!r} is missing; expected {ALPACA_RECORD}")
    for key in ("instruction", "input", "output"):
        value = record.get(key)
        if key in record and not is_text(value) and not (key == "input" and value is None):
            raise file_error(path, WHAT, f"{where}: {key!r} is {json_type(value)}, not a string; expected {ALPACA_RECORD}")


def alpaca_prompt(record: dict) -> str:
    inp = (record.get("input") or "").strip()
    return ALPACA_PROMPT.format(
        ctx=", paired with an input that provides further context" if inp else "",
        instruction=record["instruction"].strip(),
        input_block=f"### Input:\n{inp}\n\n" if inp else "",
        output=(record.get("output") or "").strip(),
    )


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
