"""Every input file is read and validated before any work, and a bad one is one InputFileError line.

One test per bad case (calibration text/Alpaca, perplexity text, PIQA, OpenBookQA, run files), the
numbers that are usage errors (``max_tokens``, ``seq_len``, ``limit``), property tests that throw
random bytes, JSON values and text at every reader (a valid result or InputFileError/UsageError,
never any other exception), and checks that the real files in ``../shared/data`` read as before.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pruners.config import read_run_file
from pruners.errors import InputFileError, UsageError
from pruners.eval.multiple_choice import Choice, read_openbookqa, read_piqa, zero_shot
from pruners.eval.perplexity import documents, perplexity
from pruners.importance.calibration import CalibrationConfig, calibration_samples, read_documents

from zoo import DATA, STORIES, require_shared

needs_shared = pytest.mark.shared
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ALPACA_OK = [{"instruction": "Say hi.", "input": "", "output": "Hi."}, {"instruction": "Add.", "input": "1 2", "output": "3"}]
OBQA_HEADER = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key"
OBQA_ROW = "q1\tFog is near:\t(A) a marsh (B) a desert\tFog is near: (A) a marsh (B) a desert\tA"


@pytest.fixture(scope="module")
def tok():
    require_shared(STORIES)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STORIES)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def fails(call, *fragments: str, error=InputFileError) -> str:
    """``call()`` raises ``error`` with one line holding every fragment; the message is returned."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def piqa_pair(tmp_path: Path, jsonl: str | bytes, labels: str | bytes | None = "0\n") -> Path:
    path = write(tmp_path / "p.jsonl", jsonl)
    if labels is not None:
        write(tmp_path / "p-labels.lst", labels)
    return path


PIQA_LINE = json.dumps({"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid."})


# -- every reader: the file itself (missing, directory, empty, whitespace, binary, not UTF-8) ----

READERS = {
    "calibration text": ("c.txt", read_documents),
    "calibration json": ("c.json", read_documents),
    "calibration jsonl": ("c.jsonl", read_documents),
    "perplexity text": ("t.txt", documents),
    "piqa": ("p.jsonl", lambda p: read_piqa(p, labels=write(p.parent / "labels.lst", "0\n"))),
    "openbookqa": ("o.tsv", read_openbookqa),
    "run yaml": ("r.yaml", read_run_file),
    "run json": ("r.json", read_run_file),
}
BAD_CONTENT = {
    "empty": (b"", "empty"),
    "whitespace only": (b" \n\t\n  \n", "whitespace"),
    "binary": (b"abc\x00\x01\x02def", "NUL byte at offset 3"),
    "not utf-8": (b"line one\ncaf\xe9\n", "not UTF-8: byte 0xe9 at offset 12 (line 2)"),
    "utf-16": ("hello".encode("utf-16"), "UTF-16"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_unreadable_content_is_one_line_naming_the_file(reader, case, tmp_path):
    name, read = READERS[reader]
    content, fragment = BAD_CONTENT[case]
    path = write(tmp_path / name, content)
    fails(lambda: read(path), str(path), fragment)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_directory_is_not_a_file(reader, tmp_path):
    name, read = READERS[reader]
    path = tmp_path / name
    path.mkdir()
    fails(lambda: read(path), str(path), "is a directory")


@pytest.mark.parametrize("name", ["runs", "runs.d"])
def test_a_run_directory_of_any_name_is_a_directory(name, tmp_path):
    (tmp_path / name).mkdir()
    fails(lambda: read_run_file(tmp_path / name), "is a directory")
    fails(lambda: read_run_file(tmp_path / "missing.toml"), "does not exist", error=FileNotFoundError)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_missing_file_is_both_input_file_error_and_file_not_found(reader, tmp_path):
    name, read = READERS[reader]
    path = tmp_path / name
    fails(lambda: read(path), str(path), "does not exist")
    with pytest.raises(FileNotFoundError):  # existing callers catch FileNotFoundError
        read(path)


# -- calibration: Alpaca .json / .jsonl records ------------------------------------------------

JSON_BAD = {
    "does not parse": ('[{"instruction": "x",', ["does not parse", "line 1"]),
    "jsonl content in .json": ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n', ["does not parse", ".jsonl"]),
    "not a list": (json.dumps({"instruction": "x", "output": "y"}), ["a JSON list of Alpaca records", "got an object"]),
    "empty list": ("[]", ["no records"]),
    "record not an object": (json.dumps([ALPACA_OK[0], "text"]), ["record [1]", "not an object"]),
    "missing instruction": (json.dumps([{"input": "", "output": "y"}]), ["record [0]", "'instruction'", "missing"]),
    "missing output": (json.dumps([ALPACA_OK[0], {"instruction": "x", "input": ""}]), ["record [1]", "'output'", "missing"]),
    "instruction not a string": (json.dumps([{"instruction": 3, "output": "y"}]), ["record [0]", "'instruction'", "a number"]),
    "input not a string": (json.dumps([{"instruction": "x", "input": ["a"], "output": "y"}]), ["record [0]", "'input'", "an array"]),
    "output not a string": (json.dumps([{"instruction": "x", "output": None}]), ["record [0]", "'output'", "null"]),
}


@pytest.mark.parametrize("case", sorted(JSON_BAD))
def test_bad_alpaca_json(case, tmp_path):
    content, fragments = JSON_BAD[case]
    path = write(tmp_path / "c.json", content)
    fails(lambda: read_documents(path), str(path), *fragments)


def test_bad_jsonl_lines_are_named(tmp_path):
    good = json.dumps(ALPACA_OK[0])
    path = write(tmp_path / "c.jsonl", f"{good}\n\n{good}\n{{oops\n")
    fails(lambda: read_documents(path), str(path), "line 4 (record [2])", "does not parse")
    write(path, f"{good}\n[1, 2]\n")
    fails(lambda: read_documents(path), "line 2 (record [1])", "not an object")
    write(path, f"{good}\n{json.dumps({'instruction': 'x'})}\n")
    fails(lambda: read_documents(path), "line 2 (record [1])", "'output'")
    write(path, "\n\n\n")
    fails(lambda: read_documents(path), str(path), "whitespace")


def test_valid_alpaca_records_render_as_before(tmp_path):
    records = [
        {"instruction": " Say hi. ", "output": "Hi."},  # input absent
        {"instruction": "Say hi.", "input": "", "output": "Hi."},  # input empty
        {"instruction": "Add.", "input": "1 2", "output": "3", "extra": 1},  # unknown keys are ignored
    ]
    docs = read_documents(write(tmp_path / "c.json", json.dumps(records)))
    assert docs == [old_alpaca_prompt(r) for r in records]
    assert docs[0] == docs[1] and "### Input:\n1 2\n\n" in docs[2]
    jsonl = write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    assert read_documents(jsonl) == docs


def test_text_of_only_separators_holds_no_documents(tmp_path):
    path = write(tmp_path / "c.txt", "<|endoftext|>\n  <|endoftext|>\n")
    fails(lambda: read_documents(path), str(path), "no documents")
    fails(lambda: documents(path), str(path), "no documents")


def test_check_calibration_file_needs_no_tokenizer(tmp_path):
    from pruners.importance.calibration import check_calibration_file

    assert check_calibration_file(write(tmp_path / "c.json", json.dumps(ALPACA_OK))) == 2
    assert check_calibration_file(write(tmp_path / "c.txt", "One.\n\nTwo.\n\nThree.")) == 3
    bad = write(tmp_path / "bad.json", json.dumps([{"instruction": "x"}]))
    fails(lambda: check_calibration_file(bad), "record [0]", "'output'")


@needs_shared
def test_too_few_tokens_for_the_samples_is_explained(tmp_path, tok):
    path = write(tmp_path / "c.txt", "\n\n".join(["Tom ran to the park."] * 10))
    total = sum(1 + len(tok(d, add_special_tokens=False)["input_ids"]) for d in read_documents(path))
    ok = calibration_samples(CalibrationConfig(source=path, samples=total // 16, seq_len=16), tok)
    assert len(ok) == total // 16
    message = fails(
        lambda: calibration_samples(CalibrationConfig(source=path, samples=total // 16 + 1, seq_len=16), tok),
        str(path), f"holds {total} tokens: at most {total // 16} samples of seq_len 16",
    )
    assert f"{total // 16 + 1}" in message


@needs_shared
def test_calibration_without_a_source_is_a_usage_error(tok):
    fails(lambda: calibration_samples(CalibrationConfig(), tok), "--calibration", error=UsageError)


# -- perplexity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,fragment", [
    ({"max_tokens": 0}, "max_tokens 0"), ({"max_tokens": -5}, "max_tokens -5"),
    ({"seq_len": 0}, "seq_len 0"), ({"seq_len": -1}, "seq_len -1"),
])
def test_perplexity_bad_numbers_are_usage_errors_before_any_work(kwargs, fragment, tmp_path):
    from pruners.eval.perplexity import check_text_file

    path = write(tmp_path / "t.txt", "Once upon a time.")
    fails(lambda: perplexity(None, None, path, progress=False, **kwargs), fragment, error=UsageError)  # no model touched
    fails(lambda: check_text_file(path, **kwargs), fragment, error=UsageError)
    assert not isinstance(UsageError(), InputFileError)


def test_check_text_file_is_cheap_and_counts_documents(tmp_path):
    from pruners.eval.perplexity import check_text_file

    assert check_text_file(write(tmp_path / "t.txt", "a<|endoftext|>b<|endoftext|>"), seq_len=8, max_tokens=10) == 2
    assert check_text_file(write(tmp_path / "w.txt", "one stream\n\nof text")) == 1
    fails(lambda: check_text_file(write(tmp_path / "e.txt", "")), "empty")


# -- PIQA ---------------------------------------------------------------------------------------

def test_piqa_bad_json_line_is_named(tmp_path):
    path = piqa_pair(tmp_path, f"{PIQA_LINE}\n{{not json\n", "0\n1\n")
    fails(lambda: read_piqa(path), str(path), "line 2", "does not parse")


@pytest.mark.parametrize("key", ["goal", "sol1", "sol2"])
def test_piqa_record_missing_a_field(key, tmp_path):
    record = json.loads(PIQA_LINE)
    del record[key]
    path = piqa_pair(tmp_path, f"{PIQA_LINE}\n{json.dumps(record)}\n", "0\n1\n")
    fails(lambda: read_piqa(path), str(path), "line 2", f"'{key}'", "missing")


@pytest.mark.parametrize("value", [None, 3, ["x"], {"a": "b"}])
def test_piqa_record_with_a_non_string_field(value, tmp_path):
    record = {**json.loads(PIQA_LINE), "sol2": value}
    path = piqa_pair(tmp_path, json.dumps(record) + "\n")
    fails(lambda: read_piqa(path), str(path), "line 1", "'sol2'", "string")


def test_piqa_record_not_an_object(tmp_path):
    path = piqa_pair(tmp_path, "[1, 2]\n")
    fails(lambda: read_piqa(path), str(path), "line 1", "not an object")


def test_piqa_labels_missing(tmp_path):
    path = piqa_pair(tmp_path, PIQA_LINE + "\n", labels=None)
    fails(lambda: read_piqa(path), "p-labels.lst", "not found", "beside p.jsonl")
    with pytest.raises(FileNotFoundError):
        read_piqa(path)


@pytest.mark.parametrize("labels,fragments", [
    ("0\nx\n", ["line 2", "'x'", "not an integer"]),
    ("0\n2\n", ["line 2", "2", "0 or 1"]),
    ("-1\n0\n", ["line 1", "0 or 1"]),
    ("0 1\n", ["line 1", "one label"]),
])
def test_piqa_bad_labels_are_named(labels, fragments, tmp_path):
    path = piqa_pair(tmp_path, f"{PIQA_LINE}\n{PIQA_LINE}\n", labels)
    fails(lambda: read_piqa(path), "p-labels.lst", *fragments)


def test_piqa_count_mismatch_and_empty_labels(tmp_path):
    path = piqa_pair(tmp_path, f"{PIQA_LINE}\n{PIQA_LINE}\n", "0\n")
    fails(lambda: read_piqa(path), "2 items", "1 labels")
    path = piqa_pair(tmp_path, f"{PIQA_LINE}\n", "")
    fails(lambda: read_piqa(path), "p-labels.lst", "empty")


def test_piqa_valid_file(tmp_path):
    items = read_piqa(piqa_pair(tmp_path, f"\n{PIQA_LINE}\n\n{PIQA_LINE}\n", "1\n\n0\n"))
    assert [it.label for it in items] == [1, 0]
    assert items[0] == Choice("Question: Open a jar\nAnswer:", (" Twist the lid.", " Eat the lid."), 1)


# -- OpenBookQA ---------------------------------------------------------------------------------

OBQA_BAD = {
    "header lacks columns": ("ID\tQuestion Stem\tChoices\n" + OBQA_ROW, ["line 1", "'Answer Key'", "header"]),
    "too few columns": (f"{OBQA_HEADER}\n{OBQA_ROW}\nq2\tStem\t(A) x (B) y\n", ["line 3", "3 tab-separated columns", "5"]),
    "choices do not parse": (f"{OBQA_HEADER}\nq2\tStem\tx or y\tStem x or y\tA\n", ["line 2", "choices", "'x or y'"]),
    "one choice": (f"{OBQA_HEADER}\nq2\tStem\t(A) x\tStem (A) x\tA\n", ["line 2", "choices"]),
    "repeated letter": (f"{OBQA_HEADER}\nq2\tStem\t(A) x (A) y\tStem\tA\n", ["line 2", "choices"]),
    "answer not a choice": (f"{OBQA_HEADER}\n{OBQA_ROW}\nq2\tStem\t(A) x (B) y\tStem\tC\n", ["line 3", "answer key 'C'", "A, B"]),
    "empty answer": (f"{OBQA_HEADER}\nq2\tStem\t(A) x (B) y\tStem\t \n", ["line 2", "answer key ''"]),
    "header only": (f"{OBQA_HEADER}\n\n", ["no questions"]),
}


@pytest.mark.parametrize("case", sorted(OBQA_BAD))
def test_bad_openbookqa(case, tmp_path):
    content, fragments = OBQA_BAD[case]
    path = write(tmp_path / "o.tsv", content)
    fails(lambda: read_openbookqa(path), str(path), *fragments)


def test_openbookqa_valid_file(tmp_path):
    items = read_openbookqa(write(tmp_path / "o.tsv", f"{OBQA_HEADER}\n{OBQA_ROW}\n\n"))
    assert items == [Choice("Fog is near:", (" a marsh", " a desert"), 0)]


# -- zero_shot: limit and labels ------------------------------------------------------------------

ITEMS = [Choice("Q:", (" a", " b"), 0), Choice("Q2:", (" c", " d"), 1)]


@pytest.mark.parametrize("limit", [0, -1, -2])
def test_zero_shot_limit_must_be_positive(limit):
    from pruners.eval.multiple_choice import check_limit

    fails(lambda: zero_shot(None, None, ITEMS, limit=limit, progress=False), f"limit {limit}", error=UsageError)
    fails(lambda: check_limit(limit), f"limit {limit}", error=UsageError)
    check_limit(None), check_limit(1)


@pytest.mark.parametrize("label", [2, -1])
def test_zero_shot_label_outside_continuations(label):
    items = [ITEMS[0], Choice("Q3:", (" e", " f"), label)]
    fails(lambda: zero_shot(None, None, items, progress=False), "item [1]", f"label {label}", "2 continuations")


def test_zero_shot_without_items():
    fails(lambda: zero_shot(None, None, [], progress=False), "no items", error=UsageError)


# -- run files ----------------------------------------------------------------------------------

RUN_BAD = {
    "yaml syntax": ("r.yaml", "model: m\n  out: [o\n", ["does not parse", "line "]),
    "yaml bad date": ("r.yaml", "model: m\nwhen: 2001-13-45\n", ["does not parse"]),
    "json syntax": ("r.json", '{"model": "m",\n "out": }', ["does not parse", "line 2"]),
    "yaml not a mapping": ("r.yaml", "- a\n- b\n", ["must hold a mapping", "list"]),
    "json not a mapping": ("r.json", "3", ["must hold a mapping", "int"]),
    "unknown suffix": ("r.toml", 'model = "m"\n', [".toml", ".yaml, .yml or .json"]),
    "no suffix": ("run", '{"model": "m"}', [".yaml, .yml or .json"]),
}


@pytest.mark.parametrize("case", sorted(RUN_BAD))
def test_bad_run_files(case, tmp_path):
    name, content, fragments = RUN_BAD[case]
    path = write(tmp_path / name, content)
    fails(lambda: read_run_file(path), str(path), *fragments)


def test_valid_run_files(tmp_path):
    assert read_run_file(write(tmp_path / "r.yml", "model: m\nratio: 0.2\n")) == {"model": "m", "ratio": 0.2}
    assert read_run_file(write(tmp_path / "r.YAML", "model: m\n")) == {"model": "m"}
    assert read_run_file(write(tmp_path / "r.json", '{"out": "o"}')) == {"out": "o"}


# -- property tests: any bytes, JSON or text -> a result or InputFileError/UsageError -----------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELD_VALUES = st.text(max_size=30) | JSON_VALUES
ALPACA_RECORDS = st.dictionaries(st.sampled_from(["instruction", "input", "output", "other"]), FIELD_VALUES, max_size=4)
PIQA_RECORDS = st.dictionaries(st.sampled_from(["goal", "sol1", "sol2", "id"]), FIELD_VALUES, max_size=4)
TSV_PIECES = list("AB(C) \t\nxy") + ["(A) ", "(B) ", "\tA\n", "\tB\n", OBQA_HEADER + "\n", OBQA_ROW + "\n"]
TSV_NOISE = st.lists(st.sampled_from(TSV_PIECES) | st.text(max_size=3), max_size=12).map("".join)
TSV_ROWS = st.lists(st.sampled_from([OBQA_ROW, "q2\tS\t(A) x (B) y (C) z\tS\tC", ""]) | TSV_NOISE, max_size=4)
TSV_TEXT = st.tuples(st.sampled_from([OBQA_HEADER, ""]) | TSV_NOISE, TSV_ROWS).map(lambda t: "\n".join([t[0], *t[1]]))


def outcome(call):
    """``call()``'s result, or None when it raised a one-line InputFileError/UsageError."""
    try:
        return call()
    except (InputFileError, UsageError) as e:
        assert len(str(e).splitlines()) == 1, str(e)
        return None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("random_inputs")


@FAST
@given(data=st.binary(max_size=300), name=st.sampled_from(sorted(READERS)))
def test_random_bytes(data, name, scratch):
    suffix, read = READERS[name]
    result = outcome(lambda: read(write(scratch / suffix, data)))  # any other exception fails the test
    assert result is None or isinstance(result, dict) or (isinstance(result, list) and result)  # no empty reading


@FAST
@given(data=st.binary(max_size=100), labels=st.binary(max_size=20))
def test_random_bytes_piqa_with_labels(data, labels, scratch):
    items = outcome(lambda: read_piqa(piqa_pair(scratch, data, labels)))
    assert items is None or all(it.label in (0, 1) for it in items)


@FAST
@given(value=JSON_VALUES)
def test_random_json_values(value, scratch):
    text = json.dumps(value)
    for suffix in ("c.json", "c.jsonl"):
        docs = outcome(lambda suffix=suffix: read_documents(write(scratch / suffix, text)))
        assert docs is None or all(isinstance(d, str) for d in docs)
    outcome(lambda: read_piqa(piqa_pair(scratch, text, "0\n")))
    for suffix in ("r.json", "r.yaml"):
        data = outcome(lambda suffix=suffix: read_run_file(write(scratch / suffix, text)))
        assert data is None or isinstance(data, dict)


@FAST
@given(records=st.lists(ALPACA_RECORDS, max_size=4), jsonl=st.booleans())
def test_random_alpaca_records(records, jsonl, scratch):
    if jsonl:
        path = write(scratch / "c.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path = write(scratch / "c.json", json.dumps(records))
    docs = outcome(lambda: read_documents(path))
    if docs is not None:
        assert docs == [old_alpaca_prompt(r) for r in records]


@FAST
@given(records=st.lists(PIQA_RECORDS, max_size=3), labels=st.lists(st.integers(-1, 2) | st.text(max_size=3), max_size=3))
def test_random_piqa_records(records, labels, scratch):
    path = piqa_pair(scratch, "\n".join(json.dumps(r) for r in records), "\n".join(map(str, labels)))
    items = outcome(lambda: read_piqa(path))
    assert items is None or (len(items) == len(records) and all(it.label in (0, 1) for it in items))


@FAST
@given(text=TSV_TEXT)
def test_random_openbookqa(text, scratch):
    items = outcome(lambda: read_openbookqa(write(scratch / "o.tsv", text)))
    assert items is None or (items and all(0 <= it.label < len(it.continuations) for it in items))


@FAST
@given(text=st.text(max_size=200), limit=st.integers(-3, 3) | st.none())
def test_random_text(text, limit, scratch):
    from pruners.eval.perplexity import check_text_file

    path = write(scratch / "t.txt", text)
    docs = outcome(lambda: documents(path))
    assert docs is None or (docs and all(d.strip() for d in docs))
    outcome(lambda: check_text_file(path, seq_len=limit, max_tokens=limit))
    outcome(lambda: read_documents(path))
    outcome(lambda: zero_shot(None, None, [], limit=limit, progress=False))


@needs_shared
@FAST
@given(text=st.text(max_size=300), samples=st.integers(1, 4), seq_len=st.integers(2, 24))
def test_random_text_calibration_samples(text, samples, seq_len, scratch, tok):
    path = write(scratch / "c.txt", text)
    out = outcome(lambda: calibration_samples(CalibrationConfig(source=path, samples=samples, seq_len=seq_len), tok))
    assert out is None or [s.shape for s in out] == [(1, seq_len)] * samples


# -- the real files read exactly as before --------------------------------------------------------

def old_read_documents(path: Path) -> list[str]:
    """The reader before validation was added (reference for bit-identical prompts)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".json", ".jsonl"):
        records = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
        return [old_alpaca_prompt(r) for r in records]
    parts = text.split("<|endoftext|>") if "<|endoftext|>" in text else text.split("\n\n")
    return [p.strip() for p in parts if p.strip()]


def old_alpaca_prompt(record: dict) -> str:
    inp = (record.get("input") or "").strip()
    return (
        f"Below is an instruction that describes a task{', paired with an input that provides further context' if inp else ''}. "
        "Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{record['instruction'].strip()}\n\n{f'### Input:{chr(10)}{inp}{chr(10)}{chr(10)}' if inp else ''}"
        f"### Response:\n{(record.get('output') or '').strip()}"
    )


def old_samples(docs: list[str], tokenizer, samples: int, seq_len: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    encoded = [[tokenizer.bos_token_id] + tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"] for d in docs]
    long_enough = [ids for ids in encoded if len(ids) >= seq_len] or [[t for ids in encoded for t in ids]]
    out = []
    for _ in range(samples):
        ids = long_enough[rng.integers(len(long_enough))]
        start = int(rng.integers(len(ids) - seq_len + 1))
        out.append(torch.tensor([ids[start : start + seq_len]], dtype=torch.long))
    return out


@needs_shared
def test_real_calibration_files_read_as_before(tmp_path, tok):
    train = DATA / "tinystories-train" / "tinystories-train.cased.txt"
    valid = DATA / "tinystories-valid" / "TinyStories-valid.first46.txt"
    alpaca = DATA / "alpaca" / "alpaca_small_2000.json"
    jsonl = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in json.loads(alpaca.read_text())[:50]))
    for path in (train, valid, alpaca, jsonl, DATA / "wikitext-2-raw" / "wiki.test.raw"):
        assert read_documents(path) == old_read_documents(path), path
    assert len(read_documents(alpaca)) == 2000 and len(read_documents(valid)) == 46
    for path, samples, seq_len, seed in ((train, 10, 128, 0), (valid, 4, 64, 3), (jsonl, 3, 16, 1)):
        got = calibration_samples(CalibrationConfig(source=path, samples=samples, seq_len=seq_len), tok, seed)
        want = old_samples(old_read_documents(path), tok, samples, seq_len, seed)
        assert all(torch.equal(a, b) for a, b in zip(got, want)) and len(got) == len(want)


@needs_shared
def test_real_eval_files_read_as_before():
    from pruners.eval.perplexity import check_text_file

    piqa = read_piqa(DATA / "piqa" / "dev.jsonl")
    rows = [json.loads(x) for x in (DATA / "piqa" / "dev.jsonl").read_text().splitlines() if x.strip()]
    gold = [int(x) for x in (DATA / "piqa" / "dev-labels.lst").read_text().split()]
    assert len(piqa) == 1838 and [it.label for it in piqa] == gold
    assert [it.continuations for it in piqa] == [(" " + r["sol1"], " " + r["sol2"]) for r in rows]
    choice = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)")
    for split in ("test", "dev"):
        items = read_openbookqa(DATA / "openbookqa" / f"{split}.tsv")
        lines = (DATA / "openbookqa" / f"{split}.tsv").read_text().splitlines()[1:]
        assert len(items) == 500
        for it, line in zip(items, lines):
            cols = line.split("\t")
            options = choice.findall(cols[2])
            assert it == Choice(cols[1], tuple(" " + t for _, t in options), [k for k, _ in options].index(cols[4].strip()))
    for path in (DATA / "wikitext-2-raw" / "wiki.test.raw", DATA / "tinystories-valid" / "TinyStories-valid.first46.txt"):
        text = path.read_text(encoding="utf-8")
        old = [d.strip() for d in (text.split("<|endoftext|>") if "<|endoftext|>" in text else [text]) if d.strip()]
        assert documents(path) == old and check_text_file(path, seq_len=128, max_tokens=2000) == len(old)


def test_a_utf8_byte_order_mark_is_not_part_of_the_text(tmp_path):
    record = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    plain, bom = tmp_path / "a.json", tmp_path / "b.json"
    plain.write_text(json.dumps([record]), encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())  # as Windows editors save it
    assert read_documents(bom) == read_documents(plain)


@pytest.mark.parametrize("reader", ["alpaca", "piqa"])
def test_an_unpaired_surrogate_escape_is_refused(reader, tmp_path):
    if reader == "alpaca":
        path = tmp_path / "c.json"
        path.write_text('[{"instruction": "bad \\ud800 text", "output": "x"}]')
        with pytest.raises(InputFileError, match=r"record \[0\]: 'instruction' is a string with an unpaired"):
            read_documents(path)
    else:
        path = tmp_path / "p.jsonl"
        path.write_text('{"goal": "g", "sol1": "\\udfff", "sol2": "b"}\n')
        (tmp_path / "p-labels.lst").write_text("0\n")
        with pytest.raises(InputFileError, match=r"line 1: 'sol1' is a string with an unpaired"):
            read_piqa(path)
