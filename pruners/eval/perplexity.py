"""Perplexity of a causal LM on a text file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError
from ..io.text_input import file_error, read_text

DOC_SEPARATOR = "<|endoftext|>"
WHAT = "perplexity text file"


def documents(path: str | Path) -> list[str]:
    """Documents of a text file: split on ``<|endoftext|>`` when present, else the whole text.

    Raises :class:`~pruners.errors.InputFileError` (one line) for a file that is missing, a
    directory, empty, only whitespace or separators, binary or not UTF-8.
    """
    text = read_text(path, WHAT)
    docs = text.split(DOC_SEPARATOR) if DOC_SEPARATOR in text else [text]
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise file_error(path, WHAT, f"holds no documents, only {DOC_SEPARATOR} separators; expected UTF-8 text")
    return docs


def check_numbers(seq_len: int | None = None, max_tokens: int | None = None) -> None:
    """UsageError unless ``seq_len`` (None: the model's context) and ``max_tokens`` (None: all) are positive."""
    if seq_len is not None and seq_len < 1:
        raise UsageError(f"perplexity seq_len {seq_len} must be at least 1 token per window")
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"perplexity max_tokens {max_tokens} must be positive (leave it out to score every token)")


def check_text_file(path: str | Path, seq_len: int | None = None, max_tokens: int | None = None) -> int:
    """The number of documents in ``path``, validating it and the numbers without a model or tokenizer.

    Call before loading a model: the same errors as :func:`perplexity` would raise on its input.
    """
    check_numbers(seq_len, max_tokens)
    return len(documents(path))


def perplexity(
    model: nn.Module,
    tokenizer,
    path: str | Path,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
    batch_size: int = 16,
    prefix: Sequence[int] = (),
) -> float:
    """Token-level perplexity: each document gets a BOS and is scored in windows of ``seq_len``.

    ``prefix`` (token ids, e.g. a prompt the model was trained behind) is put before every
    window and not scored: the windows shrink so that prefix and window fit the context.

    A file without ``<|endoftext|>`` markers is one document (WikiText-2, PTB: the usual
    stream evaluation in non-overlapping windows).  Full windows are batched.  The model runs
    where it is, in its own dtype; the loss is taken from float32 logits.  Bad numbers
    (``seq_len`` < 1, ``max_tokens`` < 1) are UsageError, a bad file InputFileError, both before any work.
    """
    check_numbers(seq_len, max_tokens)
    docs = documents(path)
    ctx = getattr(model.config, "max_position_embeddings", 2048)
    prefix = list(prefix)
    if len(prefix) >= ctx - 1:
        raise UsageError(f"a prefix of {len(prefix)} tokens leaves no room in the model's context of {ctx}")
    seq_len = min(seq_len or ctx, ctx - len(prefix))
    bos = tokenizer.bos_token_id
    windows: list[list[int]] = []
    count = 0
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]  # windowed below
        if bos is not None:
            ids = [bos] + ids
        for start in range(0, len(ids) - 1, seq_len):
            w = ids[start : start + seq_len + 1]
            if len(w) >= 2 and not (max_tokens and count >= max_tokens):
                windows.append(w)
                count += len(w) - 1
    if not windows:
        raise file_error(path, WHAT, "holds no tokens to evaluate; expected UTF-8 text")
    device = next(model.parameters()).device
    full = [w for w in windows if len(w) == seq_len + 1]
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in windows if len(w) != seq_len + 1]
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
            ids = torch.tensor([prefix + w for w in batch], device=device)  # (B, P + T + 1)
            logits = model(ids[:, :-1]).logits.float()[:, len(prefix) :]  # (B, T, vocab): the window's predictions
            target = ids[:, len(prefix) + 1 :]  # (B, T)
            nll += nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum").item()
            count += target.numel()
    mean = nll / count
    return math.inf if mean >= 709.0 else math.exp(mean)  # beyond float range: inf, not an OverflowError (NaN stays NaN)
