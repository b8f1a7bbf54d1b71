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


@dataclass(frozen=True)
class Choice:
    """One multiple-choice item."""

    context: str
    continuations: tuple[str, ...]
    label: int


def read_piqa(path: str | Path, labels: str | Path | None = None) -> list[Choice]:
    """PIQA ``*.jsonl`` (goal, sol1, sol2) with labels from ``*-labels.lst`` beside it (or ``labels``)."""
    path = Path(path)
    labels = Path(labels) if labels else path.with_name(path.stem + "-labels.lst")
    if not labels.is_file():
        raise FileNotFoundError(f"PIQA labels {str(labels)!r} not found (expected beside {path.name})")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    gold = [int(x) for x in labels.read_text().split()]
    if len(rows) != len(gold):
        raise ValueError(f"{path} has {len(rows)} items but {labels} has {len(gold)} labels")
    return [Choice(f"Question: {r['goal']}\nAnswer:", (" " + r["sol1"], " " + r["sol2"]), g) for r, g in zip(rows, gold)]


_CHOICE = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)")


def read_openbookqa(path: str | Path) -> list[Choice]:
    """OpenBookQA TSV (``ID, Question Stem, Choices "(A) .. (B) ..", Complete Question, Answer Key``)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    try:
        stem_i, choices_i, key_i = header.index("Question Stem"), header.index("Choices"), header.index("Answer Key")
    except ValueError as e:
        raise ValueError(f"{path}: not an OpenBookQA TSV (header {header})") from e
    items = []
    for line in lines[1:]:
        if not line.strip():
            continue
        cols = line.split("\t")
        options = _CHOICE.findall(cols[choices_i])
        letters = [letter for letter, _ in options]
        items.append(Choice(cols[stem_i], tuple(" " + text for _, text in options), letters.index(cols[key_i].strip())))
    return items


def _continuation_logprob(model: nn.Module, tokenizer, context: str, continuation: str) -> float:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ctx = bos + tokenizer(context, add_special_tokens=False)["input_ids"]
    full = bos + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(ctx)
    while n_ctx > 0 and full[:n_ctx] != ctx[:n_ctx]:  # tokenisation may merge across the boundary
        n_ctx -= 1
    ids = torch.tensor([full], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids).logits.float()  # (1, T, vocab)
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    cont = logp[n_ctx - 1 :].gather(1, targets[n_ctx - 1 :, None]).sum()
    return float(cont)


def zero_shot(model: nn.Module, tokenizer, items: list[Choice], limit: int | None = None, progress: bool = True) -> dict[str, float]:
    """``{"acc": ..., "acc_norm": ..., "n": ...}`` over the first ``limit`` items."""
    items = items[:limit] if limit else items
    if not items:
        raise ValueError("no items to evaluate")
    correct = correct_norm = 0
    model.eval()
    for it in tqdm(items, desc="zero-shot", disable=not progress, leave=False):
        lls = [_continuation_logprob(model, tokenizer, it.context, c) for c in it.continuations]
        norm = [ll / max(1, len(c)) for ll, c in zip(lls, it.continuations)]
        correct += int(max(range(len(lls)), key=lls.__getitem__) == it.label)
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == it.label)
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "n": len(items)}
