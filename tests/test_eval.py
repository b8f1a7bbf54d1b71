"""Evaluation: format readers, perplexity and zero-shot scoring against direct computations, the eval CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pruners.cli import main
from pruners.eval import perplexity, read_openbookqa, read_piqa, zero_shot
from pruners.io.checkpoint import load_model

from zoo import DATA, STORIES

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def lm():
    from transformers import AutoTokenizer

    return load_model(STORIES), AutoTokenizer.from_pretrained(STORIES)


def test_readers():
    piqa = read_piqa(DATA / "piqa" / "dev.jsonl")
    assert len(piqa) == 1838 and {c.label for c in piqa} == {0, 1} and all(len(c.continuations) == 2 for c in piqa)
    obqa = read_openbookqa(DATA / "openbookqa" / "test.tsv")
    assert len(obqa) == 500 and all(len(c.continuations) == 4 for c in obqa)
    assert obqa[0].continuations[obqa[0].label].strip() and obqa[0].context.startswith("A person wants to start saving")


def test_perplexity_equals_direct_computation(lm, tmp_path):
    model, tok = lm
    text = "Once upon a time, there was a little dog. The dog liked to run in the park with his friend."
    f = tmp_path / "t.txt"
    f.write_text(text)
    ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
    direct = math.exp(torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]).item())
    assert perplexity(model, tok, f, progress=False) == pytest.approx(direct, rel=1e-5)
    # windows of 8 tokens score the same tokens with less context: higher perplexity
    assert perplexity(model, tok, f, seq_len=8, progress=False) > direct


def test_a_prefix_comes_before_every_window_and_is_not_scored(lm, tmp_path):
    from pruners.errors import UsageError

    model, tok = lm
    text = "Once upon a time, there was a little dog. The dog liked to run in the park with his friend."
    f = tmp_path / "t.txt"
    f.write_text(text)
    prefix = tok("Lily and Ben went to the park.", add_special_tokens=False)["input_ids"]
    story = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + story])
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits[0, len(prefix) :]  # the story's predictions only
    direct = math.exp(torch.nn.functional.cross_entropy(logits, ids[0, len(prefix) + 1 :]).item())
    assert perplexity(model, tok, f, prefix=prefix, progress=False) == pytest.approx(direct, rel=1e-5)
    assert perplexity(model, tok, f, prefix=(), progress=False) == perplexity(model, tok, f, progress=False) != direct
    with pytest.raises(UsageError, match="leaves no room in the model's context of 512"):
        perplexity(model, tok, f, prefix=[5] * 511, progress=False)


def test_zero_shot_picks_the_most_likely_continuation(lm):
    model, tok = lm
    items = read_piqa(DATA / "piqa" / "dev.jsonl")[:12]

    def ll(context, cont):  # straightforward reference: score the continuation tokens
        ctx = [tok.bos_token_id] + tok(context, add_special_tokens=False)["input_ids"]
        full = [tok.bos_token_id] + tok(context + cont, add_special_tokens=False)["input_ids"]
        assert full[: len(ctx)] == ctx
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0, :-1], -1)
        return sum(logp[i - 1, full[i]].item() for i in range(len(ctx), len(full)))

    expect = sum(int(max(range(2), key=lambda k: ll(it.context, it.continuations[k])) == it.label) for it in items)
    got = zero_shot(model, tok, items, progress=False)
    assert got["n"] == 12 and got["acc"] == pytest.approx(expect / 12)
    assert 0.0 <= got["acc_norm"] <= 1.0


def test_eval_cli_compares_models(capsys):
    code = main(["eval", "--model", str(STORIES), "--ppl", str(DATA / "ptb" / "ptb.test.txt"), "--max-tokens", "2000",
                 "--piqa", str(DATA / "piqa" / "dev.jsonl"), "--limit", "4", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)["models"][str(STORIES)]
    assert r["params"] == 260032 and math.isfinite(r["ppl:ptb.test.txt@128"]) and 0 <= r["piqa:acc"] <= 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--ppl", "/nonexistent.txt"], "'/nonexistent.txt': does not exist"),
        ([], "nothing to evaluate"),
        (["--lm-eval-tasks", "piqa"], "pip install lm-eval"),
    ],
)
def test_eval_cli_errors(argv, message, capsys):
    code = main(["eval", "--model", str(STORIES), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_generation_speed_reports_rate_and_memory(lm):
    from pruners.eval import generation_speed

    model, _ = lm
    r = generation_speed(model, prompt_len=4, gen_len=6, repeats=1)
    assert r["tokens_per_s"] > 0 and r["gen_len"] == 6
    assert r["param_bytes"] == 4 * 260032 and r["peak_bytes"] >= r["param_bytes"]


def test_eval_speed_reports_each_models_own_peak_memory(tmp_path, capsys):
    """``depprune eval --speed BIG SMALL``: the small model's peak is its own, not the process's high-water mark."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dirs = []
    for name, hidden, vocab in (("big", 512, 32000), ("small", 32, 97)):  # ~46M parameters (185 MB) / ~10K
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=64)
        LlamaForCausalLM(config).save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))
    assert main(["eval", "--model", *dirs, "--speed", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)["models"]
    big, small = (report[d] for d in dirs)
    assert big["param_bytes"] > 180e6 > 1e6 > small["param_bytes"]
    # measured in one process, the small model's peak would include the big one's weights
    assert small["peak_bytes"] < big["peak_bytes"] - big["param_bytes"] / 2
