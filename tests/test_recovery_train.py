"""The recovery recipe on tiny models: it lowers validation loss, is deterministic, leaves its input alone, resumes."""

from __future__ import annotations

import copy

import pytest
import torch

from pruners import load_tokenizer
from pruners.errors import UsageError
from recovery import RecoverConfig, build_data, recover

from zoo import STORIES, TINYSTORIES_TRAIN, tiny_llama

pytestmark = pytest.mark.shared

STORY_VOCAB = 512  # stories260K's tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(STORIES)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """The first 120 TinyStories training stories: about 25k tokens."""
    stories = TINYSTORIES_TRAIN.read_text(encoding="utf-8").split("\n\n")[:120]
    path = tmp_path_factory.mktemp("data") / "stories.txt"
    path.write_text("\n\n".join(stories), encoding="utf-8")
    return path


def config(text, **train) -> RecoverConfig:
    return RecoverConfig.model_validate({
        "data": {"source": str(text), "seq_len": 32, "validation": 16},
        "train": {"max_steps": 12, "batch_size": 4, "eval_every": 6, "warmup_steps": 2, "lr": 5e-3, **train},
    })


def small(seed=0):
    return tiny_llama(seed, vocab_size=STORY_VOCAB, max_position_embeddings=64, initializer_range=0.3)


@pytest.mark.parametrize("method", ["lora", "full", "kd"])
def test_a_short_run_lowers_validation_loss(tok, text, method):
    cfg = config(text, max_steps=30, lr=3e-2)
    cfg.method = method
    model = small()
    teacher = small(1) if method == "kd" else None
    result = recover(model, tok, cfg, teacher=teacher, progress=False)
    losses = [v["loss"] for v in result.validation]
    assert [v["step"] for v in result.validation] == [0, 6, 12, 18, 24, 30]
    assert result.best_step > 0 and min(losses[1:]) < losses[0] - 0.3, losses
    assert len(result.history) == 30 and all(h["tokens"] == 4 * 32 for h in result.history)
    assert type(result.model) is type(model)  # merged back: a plain transformers model, no peft wrapper


def test_same_seed_same_weights_and_the_input_model_untouched(tok, text):
    model = small()
    before = copy.deepcopy(model.state_dict())
    a = recover(model, tok, config(text), progress=False).model.state_dict()
    b = recover(model, tok, config(text), progress=False).model.state_dict()
    c = recover(model, tok, config(text, seed=1), progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_select_last_keeps_the_final_weights_and_best_the_lowest_validation_loss(tok, text):
    model = small()
    best = recover(model, tok, config(text, lr=0.5, max_grad_norm=None), progress=False)  # diverges after a while
    losses = {v["step"]: v["loss"] for v in best.validation}
    assert best.best_step == min(losses, key=losses.get)
    last = recover(model, tok, config(text, lr=0.5, max_grad_norm=None, select="last"), progress=False)
    assert last.best_step == 12


def test_resume_from_a_checkpoint_gives_the_uninterrupted_weights(tok, text, tmp_path):
    cfg = config(text, save_every=4, max_steps=12)
    whole = recover(small(), tok, cfg, progress=False).model.state_dict()
    ck = tmp_path / "ck"

    class Stop(Exception):
        pass

    data = build_data(cfg.data, tok)
    interrupted = config(text, save_every=4, max_steps=12)
    seen = []

    def stop_after_two_checkpoints(*args, **kwargs):  # the run dies between steps 8 and 9
        seen.append(1)
        if len(seen) == 2:
            raise Stop
        return original(*args, **kwargs)

    import recovery.checkpoints as checkpoints

    original = checkpoints.save
    checkpoints.save = stop_after_two_checkpoints
    try:
        with pytest.raises(Stop):
            recover(small(), tok, interrupted, data=data, checkpoint_dir=ck, progress=False)
    finally:
        checkpoints.save = original
    assert checkpoints.latest(ck).name == "step-00000004"
    resumed = recover(small(), tok, interrupted, data=data, checkpoint_dir=ck, resume=True, progress=False)
    assert resumed.steps == 12 and [h["step"] for h in resumed.history] == list(range(1, 13))
    state = resumed.model.state_dict()
    assert all(torch.equal(whole[k], state[k]) for k in whole)


def test_resume_refuses_a_checkpoint_of_other_options(tok, text, tmp_path):
    ck = tmp_path / "ck"
    recover(small(), tok, config(text, save_every=4, max_steps=6), checkpoint_dir=ck, progress=False)
    with pytest.raises(UsageError, match="train.lr"):
        recover(small(), tok, config(text, save_every=4, max_steps=6, lr=1e-3), checkpoint_dir=ck, resume=True,
                progress=False)


def test_kd_needs_a_teacher_with_the_same_vocabulary(tok, text):
    cfg = config(text)
    cfg.method = "kd"
    with pytest.raises(UsageError, match="teacher"):
        recover(small(), tok, cfg, progress=False)
    with pytest.raises(UsageError, match="vocabulary has 600 tokens"):
        recover(small(), tok, cfg, teacher=tiny_llama(vocab_size=600), progress=False)
