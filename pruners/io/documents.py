"""Documents of a training-text file: plain text split into documents, or Alpaca instruction records.

Used by calibration (:mod:`pruners.importance.calibration`) and by fine-tuning (``recovery``):
every reader validates the file as it reads it and raises :class:`~pruners.errors.InputFileError`,
one line naming the file and the record or line, for a file that is missing, a directory, empty,
binary or not UTF-8, JSON that does not parse, and records that are not Alpaca records.

>>> import tempfile, pathlib, json
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
>>> _ = p.write_text(json.dumps({"instruction": "Add 2 and 3.", "output": "5"}) + "\\n")
>>> read_alpaca(p)
[{'instruction': 'Add 2 and 3.', 'output': '5'}]
>>> print(alpaca_prompt(read_alpaca(p)[0], response=False))
Below is an instruction that describes a task. Write a response that appropriately completes the request.
<BLANKLINE>
### Instruction:
Add 2 and 3.
<BLANKLINE>
### Response:
<BLANKLINE>
"""

from __future__ import annotations

import json
from pathlib import Path

from .text_input import file_error, is_text, json_error, json_type, read_text

# alpaca-lora's and LLM-Pruner's template; the response follows "### Response:\n"
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n{output}"
)

WHAT = "calibration file"
ALPACA_RECORD = "Alpaca records: objects with string 'instruction' and 'output' and an optional string 'input'"


def is_alpaca_file(path: str | Path) -> bool:
    """Whether ``path`` is read as Alpaca records (a ``.json`` or ``.jsonl`` suffix, any case).

    >>> is_alpaca_file("data/train.JSONL"), is_alpaca_file("stories.txt")
    (True, False)
    """
    return Path(path).suffix.lower() in (".json", ".jsonl")


def read_documents(path: str | Path, what: str = WHAT) -> list[str]:
    """Documents of a text or Alpaca file (format chosen by the suffix, see :func:`is_alpaca_file`).

    Text is split into documents on ``<|endoftext|>`` when it holds one, else on blank lines;
    Alpaca records are rendered whole (prompt and response) with :func:`alpaca_prompt`.
    ``what`` names the file in messages (``"calibration file"``, ``"training data file"``).
    A missing file's error is also a :class:`FileNotFoundError`.
    """
    path = Path(path)
    if is_alpaca_file(path):
        return [alpaca_prompt(r) for r in read_alpaca(path, what)]
    text = read_text(path, what)
    parts = text.split("<|endoftext|>") if "<|endoftext|>" in text else text.split("\n\n")
    docs = [p.strip() for p in parts if p.strip()]
    if not docs:
        raise file_error(path, what, "holds no documents, only <|endoftext|> separators; expected UTF-8 text")
    return docs


def read_alpaca(path: str | Path, what: str = WHAT) -> list[dict]:
    """The records of an Alpaca ``.json`` (a list) or ``.jsonl`` (an object per line) file, each checked."""
    path = Path(path)
    jsonl = path.suffix.lower() == ".jsonl"
    expected = ("one JSON object per line, " if jsonl else "a JSON list of ") + ALPACA_RECORD
    text = read_text(path, what, expected)
    records: list = []
    if jsonl:
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            where = f"line {lineno} (record [{len(records)}])"
            try:
                records.append(json.loads(line))
            except (ValueError, RecursionError) as e:
                raise file_error(
                    path, what, f"{where} does not parse as JSON: {json_error(e)}; expected one JSON object per line"
                ) from None
            _check_record(path, what, where, records[-1])
    else:
        try:
            records = json.loads(text)
        except (ValueError, RecursionError) as e:
            hint = " (one record per line? then name the file .jsonl)" if str(e).startswith("Extra data") else ""
            raise file_error(
                path, what, f"does not parse as JSON: {json_error(e)}{hint}; expected a JSON list of Alpaca records"
            ) from None
        if not isinstance(records, list):
            raise file_error(path, what, f"expected a JSON list of {ALPACA_RECORD}, got {json_type(records)}")
        for i, record in enumerate(records):
            _check_record(path, what, f"record [{i}]", record)
    if not records:
        raise file_error(path, what, f"holds no records (an empty list); expected {ALPACA_RECORD}")
    return records


def _check_record(path: Path, what: str, where: str, record) -> None:
    if not isinstance(record, dict):
        raise file_error(path, what, f"{where} is {json_type(record)}, not an object; expected {ALPACA_RECORD}")
    for key in ("instruction", "output"):
        if key not in record:
            raise file_error(path, what, f"{where}: {key!r} is missing; expected {ALPACA_RECORD}")
    for key in ("instruction", "input", "output"):
        value = record.get(key)
        if key in record and not is_text(value) and not (key == "input" and value is None):
            raise file_error(path, what, f"{where}: {key!r} is {json_type(value)}, not a string; expected {ALPACA_RECORD}")


def alpaca_prompt(record: dict, response: bool = True) -> str:
    """``record`` in the Alpaca template; with ``response=False`` only the prompt, up to ``### Response:\\n``.

    The prompt without the response is a prefix of the prompt with it, so the response's tokens
    can be told apart (the loss of instruction tuning is taken on them only).
    """
    inp = (record.get("input") or "").strip()
    return ALPACA_PROMPT.format(
        ctx=", paired with an input that provides further context" if inp else "",
        instruction=record["instruction"].strip(),
        input_block=f"### Input:\n{inp}\n\n" if inp else "",
        output=(record.get("output") or "").strip() if response else "",
    )
