"""Perplexity of a causal LM on a text file."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

DOC_SEPARATOR = "<|endoftext|>"


def documents(path: str | Path) -> list[str]:
    """Documents of a text file: split on ``<|endoftext|>`` when present, else the whole text."""
    text = Path(path).read_text(encoding="utf-8")
    docs = text.split(DOC_SEPARATOR) if DOC_SEPARATOR in text else [text]
    return [d.strip() for d in docs if d.strip()]


def perplexity(
    model: nn.Module,
    tokenizer,
    path: str | Path,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
    batch_size: int = 16,
) -> float:
    """Token-level perplexity: each document gets a BOS and is scored in windows of ``seq_len``.

    A file without ``<|endoftext|>`` markers is one document (WikiText-2, PTB: the usual
    stream evaluation in non-overlapping windows).  Full windows are batched.
    """
    ctx = getattr(model.config, "max_position_embeddings", 2048)
    seq_len = min(seq_len or ctx, ctx)
    bos = tokenizer.bos_token_id
    windows: list[list[int]] = []
    count = 0
    for doc in documents(path):
        ids = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]  # windowed below
        if bos is not None:
            ids = [bos] + ids
        for start in range(0, len(ids) - 1, seq_len):
            w = ids[start : start + seq_len + 1]
            if len(w) >= 2 and not (max_tokens and count >= max_tokens):
                windows.append(w)
                count += len(w) - 1
    if not windows:
        raise ValueError(f"{path} contains no text to evaluate")
    device = next(model.parameters()).device
    full = [w for w in windows if len(w) == seq_len + 1]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in windows if len(w) != seq_len + 1]
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
            ids = torch.tensor(batch, device=device)  # (B, T + 1)
            logits = model(ids[:, :-1]).logits.float()  # (B, T, vocab)
            nll += nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            count += ids[:, 1:].numel()
    return math.exp(nll / count)
