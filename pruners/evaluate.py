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
) -> float:
    """Token-level perplexity: each document gets a BOS and is scored in windows of ``seq_len``."""
    ctx = getattr(model.config, "max_position_embeddings", 2048)
    seq_len = min(seq_len or ctx, ctx)
    bos = tokenizer.bos_token_id
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    docs = documents(path)
    model.eval()
    with torch.no_grad():
        for doc in tqdm(docs, desc="perplexity", disable=not progress, leave=False):
            ids = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]  # windowed below
            if bos is not None:
                ids = [bos] + ids
            for start in range(0, len(ids) - 1, seq_len):
                window = torch.tensor([ids[start : start + seq_len + 1]], device=device)
                if window.shape[1] < 2:
                    continue
                logits = model(window[:, :-1]).logits.float()  # (1, T, vocab)
                loss = nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")
                nll += loss.item()
                count += window.shape[1] - 1
                if max_tokens and count >= max_tokens:
                    return math.exp(nll / count)
    if count == 0:
        raise ValueError(f"{path} contains no text to evaluate")
    return math.exp(nll / count)
