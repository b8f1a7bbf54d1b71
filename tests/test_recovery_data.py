"""Recovery data: Alpaca prompt masking, packed text windows, the validation split, refusals of bad files."""

from __future__ import annotations

import json

import pytest

from pruners import load_tokenizer
from pruners.errors import InputFileError
from recovery import IGNORE, DataConfig, alpaca_example, build_data, read_data, text_examples

from zoo import STORIES

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(STORIES)


RECORD = {"instruction": "Name a colour.", "input": "The sky", "output": "Blue."}
PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName a colour.\n\n### Input:\nThe sky\n\n### Response:\n"
)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_alpaca_labels_are_ignored_exactly_over_the_prompt_tokens(tok):
    ex = alpaca_example(RECORD, tok, seq_len=512)
    prompt = [tok.bos_token_id] + ids(tok, PROMPT)  # written out by hand above, not through the template
    response = ids(tok, "Blue.") + [tok.eos_token_id]
    assert ex.input_ids == prompt + response
    assert ex.labels == [IGNORE] * len(prompt) + response
    assert ex.labels.count(IGNORE) == len(prompt)


def test_train_on_prompt_labels_every_token(tok):
    ex = alpaca_example(RECORD, tok, seq_len=512, train_on_prompt=True)
    assert ex.labels == ex.input_ids and IGNORE not in ex.labels


def test_alpaca_records_are_cut_to_seq_len_and_records_without_a_response_token_dropped(tmp_path, tok):
    n_prompt = 1 + len(ids(tok, PROMPT))
    ex = alpaca_example(RECORD, tok, seq_len=n_prompt + 1)
    assert len(ex.input_ids) == n_prompt + 1 and ex.labels[-1] == ids(tok, "Blue.")[0]
    path = tmp_path / "a.json"
    path.write_text(json.dumps([RECORD, {"instruction": "x " * 400, "output": "y"}, RECORD]))
    data = build_data(DataConfig(source=str(path), seq_len=n_prompt + 1, validation=1), tok)
    assert (data.records, data.dropped, len(data.train), len(data.validation)) == (3, 1, 1, 1)
    assert data.train[0] == data.validation[0] == ex
    path.write_text(json.dumps([{"instruction": "x " * 400, "output": "y"}]))
    with pytest.raises(InputFileError, match="no response token"):
        build_data(DataConfig(source=str(path), seq_len=64), tok)


def test_text_is_packed_into_full_windows_with_bos_and_eos_between_documents(tok):
    docs = ["Tom ran.", "Sue sat down.", "The end."]
    stream = []
    for d in docs:
        stream += [tok.bos_token_id] + ids(tok, d) + [tok.eos_token_id]
    windows = text_examples(docs, tok, seq_len=5)
    assert [w.input_ids for w in windows] == [stream[i : i + 5] for i in range(0, len(stream) - 4, 5)]
    assert all(w.labels == w.input_ids for w in windows)
    assert len(windows) == len(stream) // 5


def test_validation_split_is_the_end_of_the_file_whatever_the_seed(tmp_path, tok):
    path = tmp_path / "t.txt"
    path.write_text("\n\n".join(f"Story number {i} is about a cat." for i in range(40)))
    data = build_data(DataConfig(source=str(path), seq_len=8, validation=0.25), tok)
    every = text_examples(read_data(DataConfig(source=str(path))), tok, 8)
    n_val = round(len(every) * 0.25)
    assert data.validation == every[-n_val:] and data.train == every[:-n_val]
    assert len(build_data(DataConfig(source=str(path), seq_len=8, validation=3), tok).validation) == 3


@pytest.mark.parametrize("name,content,fragment", [
    ("empty.txt", "", "empty"),
    ("blank.txt", "  \n\n ", "whitespace"),
    ("list.json", json.dumps({"instruction": "x"}), "expected a JSON list"),
    ("schema.json", json.dumps([{"prompt": "x", "completion": "y"}]), "'instruction' is missing"),
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{oops\n', "line 2"),
    ("none.json", "[]", "no records"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputFileError) as e:
        read_data(DataConfig(source=str(path)))
    assert "training data file" in str(e.value) and str(path) in str(e.value) and fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_too_little_data_for_one_window_or_for_the_split_is_refused(tmp_path, tok):
    path = tmp_path / "short.txt"
    path.write_text("Tom ran.")
    with pytest.raises(InputFileError, match="fewer tokens than one window"):
        build_data(DataConfig(source=str(path), seq_len=256), tok)
    with pytest.raises(InputFileError, match="leaves none to train on"):
        build_data(DataConfig(source=str(path), seq_len=2, validation=50), tok)
