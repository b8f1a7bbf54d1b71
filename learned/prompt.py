"""The collaborative prompt (Compresso): a text put before every training example, telling the model it is pruned.

Its tokens carry no loss: the model is not taught to write the prompt, only to go on well after it.
An example that starts with BOS keeps it first (``BOS prompt rest``); one that does not (a window
cut from packed text) gets ``BOS prompt`` in front.

>>> from recovery import IGNORE, Example
>>> ex = with_prompt(Example([1, 7, 8], [IGNORE, 7, 8]), prompt_ids=[5, 6], bos=1)
>>> ex.input_ids, ex.labels
([1, 5, 6, 7, 8], [-100, -100, -100, 7, 8])
>>> with_prompt(Example([7, 8], [7, 8]), [5, 6], bos=1).input_ids
[1, 5, 6, 7, 8]
"""

from __future__ import annotations

from dataclasses import replace

from recovery import IGNORE, Example, TrainingData


def prompt_ids(tokenizer, text: str) -> list[int]:
    """The prompt's token ids (no special tokens), ending in a blank line that separates it from the example."""
    return list(tokenizer(text + "\n\n", add_special_tokens=False, verbose=False)["input_ids"])


def with_prompt(example: Example, prompt_ids: list[int], bos: int | None) -> Example:
    """``example`` with the prompt in front (after its BOS), the prompt's labels :data:`~recovery.IGNORE`."""
    ids, labels = list(example.input_ids), list(example.labels)
    head: list[int] = []
    if bos is not None:
        head = [bos]
        if ids and ids[0] == bos:
            ids, labels = ids[1:], labels[1:]
    head = head + list(prompt_ids)
    return Example(head + ids, [IGNORE] * len(head) + labels)


def prompted(data: TrainingData, prompt_ids: list[int], bos: int | None) -> TrainingData:
    """Every training and validation example of ``data`` with the prompt in front."""
    return replace(
        data,
        train=[with_prompt(e, prompt_ids, bos) for e in data.train],
        validation=[with_prompt(e, prompt_ids, bos) for e in data.validation],
    )
