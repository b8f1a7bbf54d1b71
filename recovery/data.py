"""Fine-tuning data: a file read and checked, tokenised into sequences with labels, split, batched.

Two kinds of file (chosen by the suffix, as for calibration):

- **Alpaca records** (``.json`` list or ``.jsonl``): each record is rendered with the Alpaca
  template; the loss is taken on the response tokens only (the prompt's labels are ``-100``),
  or on the whole record with ``train_on_prompt``.  A record is ``BOS prompt response EOS``,
  cut to ``seq_len`` tokens; a record whose prompt fills all of ``seq_len`` has no response
  token left and is dropped (and counted).
- **Plain text**: documents (split on ``<|endoftext|>`` or blank lines) are joined into one
  stream, each as ``BOS document EOS``, and cut into windows of ``seq_len`` tokens, every token
  a label.

The last sequences of the file are the validation split (a fraction or a count), the same for
every seed.  Everything here runs before the model is loaded, so a bad file, or one too small
for a single training sequence, costs seconds.

>>> class Tok:  # a toy tokenizer: one id per character
...     bos_token_id, eos_token_id, pad_token_id = 1, 2, None
...     def __call__(self, text, add_special_tokens=False, verbose=False):
...         return {"input_ids": [ord(c) for c in text]}
>>> ex = alpaca_example({"instruction": "hi", "output": "ok"}, Tok(), seq_len=512)
>>> ex.labels.count(IGNORE) == len(ex.input_ids) - 3  # "o", "k", EOS carry the loss
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from pruners import alpaca_prompt, is_alpaca_file, read_alpaca, read_documents
from pruners.errors import InputFileError

from .config import DataConfig

IGNORE = -100  # the label of a token that carries no loss (PyTorch's cross_entropy ignore_index)
WHAT = "training data file"


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids and their labels (``IGNORE`` where no loss is taken), aligned."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class TrainingData:
    """The tokenised file: training and validation sequences and what became of the file."""

    kind: str  # "alpaca" or "text"
    train: list[Example]
    validation: list[Example]
    records: int  # Alpaca records or text documents read
    dropped: int  # Alpaca records with no response token within seq_len

    @property
    def train_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.train)

    def summary(self) -> dict:
        return {
            "kind": self.kind, "records": self.records, "dropped": self.dropped, "train_sequences": len(self.train),
            "validation_sequences": len(self.validation), "train_tokens": self.train_tokens,
        }


def read_data(config: DataConfig) -> list:
    """The file's Alpaca records or text documents, checked (one-line :class:`InputFileError`); no tokenizer needed."""
    if is_alpaca_file(config.source):
        return read_alpaca(config.source, WHAT)
    return read_documents(config.source, WHAT)


def alpaca_example(record: dict, tokenizer, seq_len: int, train_on_prompt: bool = False) -> Example:
    """``BOS prompt response EOS`` cut to ``seq_len``; labels ``IGNORE`` over ``BOS prompt`` unless ``train_on_prompt``.

    The prompt and the response are tokenised separately, so the masked tokens are exactly the
    prompt's (tokenising the joined text could merge tokens across the boundary).
    """
    prompt = _bos(tokenizer) + _ids(tokenizer, alpaca_prompt(record, response=False))
    response = _ids(tokenizer, alpaca_prompt(record)[len(alpaca_prompt(record, response=False)):]) + _eos(tokenizer)
    ids = (prompt + response)[:seq_len]
    labels = list(ids) if train_on_prompt else ([IGNORE] * len(prompt) + response)[:seq_len]
    return Example(ids, labels)


def text_examples(documents: list[str], tokenizer, seq_len: int) -> list[Example]:
    """The documents as one stream ``BOS doc EOS BOS doc EOS ...`` cut into full windows of ``seq_len``."""
    stream: list[int] = []
    for doc in documents:
        stream += _bos(tokenizer) + _ids(tokenizer, doc) + _eos(tokenizer)
    windows = [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    return [Example(w, list(w)) for w in windows]


def build_data(config: DataConfig, tokenizer, items: list | None = None) -> TrainingData:
    """Tokenise and split the file of ``config`` (``items``: what :func:`read_data` returned, to read it once).

    Raises :class:`InputFileError` naming the file when it yields no training sequence: text
    shorter than one window, Alpaca records whose prompts fill ``seq_len``, or a validation split
    that leaves nothing to train on.
    """
    items = read_data(config) if items is None else items
    path = config.source
    dropped = 0
    if is_alpaca_file(path):
        kind = "alpaca"
        examples = []
        for record in items:
            ex = alpaca_example(record, tokenizer, config.seq_len, config.train_on_prompt)
            if all(label == IGNORE for label in ex.labels[1:]):  # the first label is never predicted
                dropped += 1
            else:
                examples.append(ex)
        if not examples:
            raise _error(path, f"every one of its {len(items)} records has a prompt of {config.seq_len} tokens or more, "
                         "leaving no response token to learn; raise data.seq_len")
    else:
        kind = "text"
        examples = text_examples(items, tokenizer, config.seq_len)
        if not examples:
            raise _error(path, f"holds fewer tokens than one window of data.seq_len {config.seq_len}; give more text "
                         "or a shorter seq_len")
    n_val = validation_count(len(examples), config.validation)
    if n_val >= len(examples):
        raise _error(path, f"yields {len(examples)} sequences; a validation split of {n_val} leaves none to train on "
                     "(give a smaller data.validation or more data)")
    return TrainingData(kind, examples[: len(examples) - n_val], examples[len(examples) - n_val :], len(items), dropped)


def validation_count(n: int, validation: float) -> int:
    """Sequences held out of ``n``: ``validation`` itself when it is a count, else that fraction (at least one).

    >>> validation_count(100, 0.05), validation_count(100, 12), validation_count(3, 0.05)
    (5, 12, 1)
    """
    if validation >= 1:
        return int(validation)
    return max(1, math.floor(n * validation + 0.5))


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch: ``input_ids``, ``attention_mask`` and ``labels`` (``IGNORE`` on padding), each ``(B, T)``.

    >>> b = collate([Example([5, 6, 7], [5, 6, 7]), Example([8], [8])], pad_id=0)
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[5, 6, 7], [8, -100, -100]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_id(tokenizer) -> int:
    """The id padding uses (masked out of attention and loss): the tokenizer's pad token, else EOS, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the ``n`` training sequences in ``epoch``: a permutation fixed by ``seed`` and ``epoch``.

    It is recomputed, not stored, so a resumed run walks the same order from where it stopped.

    >>> epoch_order(5, 0, 1) == epoch_order(5, 0, 1) != epoch_order(5, 0, 2)
    True
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _error(path, detail: str) -> InputFileError:
    return InputFileError(" ".join(f"{WHAT} {str(Path(path))!r}: {detail}".splitlines()))
