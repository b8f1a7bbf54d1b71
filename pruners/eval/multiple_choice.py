"""Zero-shot multiple choice by log-likelihood (PIQA, OpenBookQA), reporting acc and acc_norm.

Each item is a context and several continuations; the model's choice is the continuation with
the highest summed log-likelihood (``acc``) or the highest per-character log-likelihood
(``acc_norm``, as lm-evaluation-harness normalises by continuation length in characters).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputFileError, UsageError
from ..io.text_input import MissingInputFileError, file_error, is_text, json_error, json_type, read_text


@dataclass(frozen=True)
class Choice:
    """One multiple-choice item."""

    context: str
    continuations: tuple[str, ...]
    label: int


PIQA_RECORD = "one JSON object per line with string 'goal', 'sol1' and 'sol2'"


def read_piqa(path: str | Path, labels: str | Path | None = None) -> list[Choice]:
    """PIQA ``*.jsonl`` (goal, sol1, sol2) with labels from ``*-labels.lst`` beside it (or ``labels``).

    Raises :class:`~pruners.errors.InputFileError` (one line naming the file and line) for a
    bad file, record or label, or when the counts differ; a missing file's error is also a
    :class:`FileNotFoundError`.
    """
    path = Path(path)
    labels = Path(labels) if labels else path.with_name(path.stem + "-labels.lst")
    rows = []
    for lineno, line in enumerate(read_text(path, "PIQA file", PIQA_RECORD).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise file_error(path, "PIQA file", f"line {lineno} does not parse as JSON: {json_error(e)}; expected {PIQA_RECORD}") from None
        if not isinstance(row, dict):
            raise file_error(path, "PIQA file", f"line {lineno} is {json_type(row)}, not an object; expected {PIQA_RECORD}")
        for key in ("goal", "sol1", "sol2"):
            if key not in row:
                raise file_error(path, "PIQA file", f"line {lineno}: {key!r} is missing; expected {PIQA_RECORD}")
            if not is_text(row[key]):
                raise file_error(
                    path, "PIQA file", f"line {lineno}: {key!r} is {json_type(row[key])}, not a string; expected {PIQA_RECORD}"
                )
        rows.append(row)
    if not labels.exists():
        raise file_error(labels, "PIQA labels", f"not found (expected beside {path.name}: one label 0 or 1 per line)", MissingInputFileError)
    gold = _piqa_labels(labels)
    if len(rows) != len(gold):
        raise InputFileError(f"PIQA file {str(path)!r} has {len(rows)} items but {str(labels)!r} has {len(gold)} labels")
    return [Choice(f"Question: {r['goal']}\nAnswer:", (" " + r["sol1"], " " + r["sol2"]), g) for r, g in zip(rows, gold)]


def _piqa_labels(labels: Path) -> list[int]:
    """One label, 0 (sol1) or 1 (sol2), per non-blank line."""
    expected = "one label 0 (sol1) or 1 (sol2) per line"
    gold = []
    for lineno, line in enumerate(read_text(labels, "PIQA labels", expected).split("\n"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 1:
            raise file_error(labels, "PIQA labels", f"line {lineno} holds {len(fields)} values {line.strip()[:40]!r}; expected {expected}")
        try:
            label = int(fields[0])
        except ValueError:
            raise file_error(labels, "PIQA labels", f"line {lineno}: {fields[0][:40]!r} is not an integer; expected {expected}") from None
        if label not in (0, 1):
            raise file_error(labels, "PIQA labels", f"line {lineno}: label {label} is not 0 or 1; expected {expected}")
        gold.append(label)
    return gold


_CHOICE = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)")


OBQA_COLUMNS = ("Question Stem", "Choices", "Answer Key")


def read_openbookqa(path: str | Path) -> list[Choice]:
    """OpenBookQA TSV (``ID, Question Stem, Choices "(A) .. (B) ..", Complete Question, Answer Key``).

    Raises :class:`~pruners.errors.InputFileError` (one line naming the file and line) for a bad
    file, a header without the columns, a short row, choices that do not parse, an answer key that
    is not one of the row's letters, or no questions at all.
    """
    what = "OpenBookQA file"
    expected = "a TSV with header columns " + ", ".join(OBQA_COLUMNS)
    lines = read_text(path, what, expected).split("\n")
    header = lines[0].split("\t")
    missing = [c for c in OBQA_COLUMNS if c not in header]
    if missing:
        raise file_error(
            path, what, f"line 1: the header {lines[0][:120]!r} lacks columns {', '.join(map(repr, missing))}; expected {expected}"
        )
    stem_i, choices_i, key_i = (header.index(c) for c in OBQA_COLUMNS)
    width = max(stem_i, choices_i, key_i) + 1
    items = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < width:
            raise file_error(path, what, f"line {lineno} has {len(cols)} tab-separated columns; expected at least {width} as in the header")
        options = _CHOICE.findall(cols[choices_i])
        letters = [letter for letter, _ in options]
        if len(options) < 2 or len(set(letters)) != len(letters):
            raise file_error(
                path, what, f"line {lineno}: choices {cols[choices_i][:120]!r} do not parse; expected two or more '(A) text (B) text ...'"
            )
        key = cols[key_i].strip()
        if key not in letters:
            raise file_error(path, what, f"line {lineno}: answer key {key[:20]!r} is not one of the choice letters {', '.join(letters)}")
        items.append(Choice(cols[stem_i], tuple(" " + text for _, text in options), letters.index(key)))
    if not items:
        raise file_error(path, what, f"holds no questions, only a header; expected {expected} and one question per line")
    return items


def continuation_logprob(model: nn.Module, tokenizer, context: str, continuation: str) -> float:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ctx = bos + tokenizer(context, add_special_tokens=False)["input_ids"]
    full = bos + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(ctx)
    while n_ctx > 0 and full[:n_ctx] != ctx[:n_ctx]:  # tokenisation may merge across the boundary
        n_ctx -= 1
    window = getattr(model.config, "max_position_embeddings", None)
    if isinstance(window, int) and len(full) > window:  # too long for the model: drop the oldest context (as lm-eval)
        drop = len(full) - window
        full, n_ctx = full[drop:], n_ctx - drop
    n_ctx = max(1, n_ctx)  # the first token has no prediction
    ids = torch.tensor([full], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids).logits.float()  # (1, T, vocab)
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    cont = logp[n_ctx - 1 :].gather(1, targets[n_ctx - 1 :, None]).sum()
    return float(cont)


def check_limit(limit: int | None) -> None:
    """UsageError unless ``limit`` (items per task; None: all) is positive; call it before loading a model."""
    if limit is not None and limit < 1:
        raise UsageError(f"zero-shot limit {limit} must be positive (leave it out to evaluate every item)")


def zero_shot(model: nn.Module, tokenizer, items: list[Choice], limit: int | None = None, progress: bool = True) -> dict[str, float]:
    """``{"acc": ..., "acc_norm": ..., "n": ...}`` over the first ``limit`` items (None: all of them).

    The model runs where it is, in its own dtype; log-likelihoods come from float32 logits.  A
    ``limit`` below 1 or no items is a UsageError; an item whose label is not the index of one
    of its continuations is an InputFileError.  Both are raised before the model is run.
    """
    check_limit(limit)
    items = items[:limit] if limit else items
    if not items:
        raise UsageError("no items to evaluate")
    for i, it in enumerate(items):
        if not 0 <= it.label < len(it.continuations):
            raise InputFileError(
                f"multiple-choice item [{i}] ({it.context[:40]!r}): label {it.label} is not the index of one of its "
                f"{len(it.continuations)} continuations"
            )
    correct = correct_norm = 0
    model.eval()
    for it in tqdm(items, desc="zero-shot", disable=not progress, leave=False):
        lls = [continuation_logprob(model, tokenizer, it.context, c) for c in it.continuations]
        norm = [ll / max(1, len(c)) for ll, c in zip(lls, it.continuations)]
        correct += int(max(range(len(lls)), key=lls.__getitem__) == it.label)
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == it.label)
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "n": len(items)}
