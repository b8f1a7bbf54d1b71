"""``--device`` / ``--dtype``: resolution and its errors, and bf16 end to end on the real stories260K.

The bf16 run loads the checkpoint (stored in fp32) in bf16, scores with a data-free (``l2``), a
gradient (``taylor-element``) and an activation (``wanda-sp``) estimator on TinyStories
calibration windows, prunes, saves, reloads and evaluates -- all on the CPU, through the same
code that runs on a GPU (the CUDA-only test at the end repeats it there).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pruners.errors import UsageError
from pruners.eval import generation_speed, perplexity
from pruners.importance import collect_signals
from pruners.importance.calibration import CalibrationConfig, calibration_samples
from pruners.io.checkpoint import computed_buffers, load_model, load_tokenizer, save_pruned
from pruners.io.device import resolve_device, resolve_dtype
from pruners.io.model_files import read_safetensors_header
from pruners.pipeline import PruneConfig, analyze, member_scores, prune

from zoo import STORIES, TINYSTORIES_TRAIN, TINYSTORIES_VALID

TRAIN, VALID = TINYSTORIES_TRAIN, TINYSTORIES_VALID
real_data = pytest.mark.shared
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ESTIMATORS = ("l2", "taylor-element", "wanda-sp")
CALIBRATION = {"source": TRAIN, "samples": 4, "seq_len": 64}
PPL_TOKENS = 3000  # of the 46 validation stories' ~9k tokens: enough for a stable mean, quick on a shared CPU


# -- resolve_device / resolve_dtype -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["gpu", "CUDA", "cuda0", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "mps", ""])
def test_an_unknown_device_is_one_line_naming_it_and_the_valid_ones(text):
    with pytest.raises(UsageError) as e:
        resolve_device(text)
    assert str(e.value) == (
        f"--device {text!r} is not a device depprune can use; expected cpu, cuda or cuda:N (N the index of a CUDA device)"
    )


@no_cuda
@pytest.mark.parametrize("text", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_line(text):
    with pytest.raises(UsageError) as e:
        resolve_device(text)
    assert str(e.value) == (
        f"--device {text}: no CUDA device is available here (torch.cuda.is_available() is False); use --device cpu"
    )


@no_cuda
def test_the_default_device_without_cuda_is_the_cpu():
    assert resolve_device(None) == torch.device("cpu")


@no_cuda
@real_data
def test_load_model_on_cuda_without_cuda_fails_before_reading_the_model(tmp_path):
    # a directory that is not a model at all: the device is refused first, in one line
    with pytest.raises(UsageError, match=r"^--device cuda: no CUDA device is available here") as e:
        load_model(tmp_path, device="cuda")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["fp16", "bf16", "float64", "half", "torch.float16", "Float32", ""])
def test_an_unknown_dtype_is_one_line_naming_it_and_the_valid_ones(text):
    with pytest.raises(UsageError) as e:
        resolve_dtype(text, "float32")
    assert str(e.value) == f"--dtype {text!r} is not a dtype depprune can use; expected float32, bfloat16 or float16"


@pytest.mark.parametrize(
    "text, stored, expected",
    [
        (None, None, torch.float32),  # the config names none
        (None, "auto", torch.float32),
        (None, "bfloat16", torch.bfloat16),
        (None, "float16", torch.float16),
        (None, "torch.float16", torch.float16),  # as older transformers wrote it
        (None, torch.bfloat16, torch.bfloat16),
        ("float32", "bfloat16", torch.float32),  # the flag wins
        ("bfloat16", None, torch.bfloat16),
        ("float16", "float64", torch.float16),  # an explicit flag needs no loadable checkpoint dtype
    ],
)
def test_resolve_dtype(text, stored, expected):
    assert resolve_dtype(text, stored) is expected


@pytest.mark.parametrize("stored", ["float64", "int8", "float8_e4m3fn", "fp32"])
def test_a_checkpoint_dtype_depprune_does_not_load_asks_for_dtype(stored):
    with pytest.raises(UsageError, match=rf"config.json dtype is '{stored}'.*pass --dtype float32, bfloat16 or float16$"):
        resolve_dtype(None, stored)


@cuda_only
def test_cuda_resolves_to_an_explicit_index_and_out_of_range_is_refused():
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(None).type == "cuda"
    n = torch.cuda.device_count()
    with pytest.raises(UsageError, match=rf"^--device cuda:{n}: there is no CUDA device {n}; this machine has {n} \(cuda:0"):
        resolve_device(f"cuda:{n}")


# -- loading in a dtype -----------------------------------------------------------------------------


def _copy_with_config(tmp_path: Path, **changes) -> Path:
    """stories260K (fp32 weights) with its config.json edited: ``changes`` set, ``None`` values removed."""
    d = tmp_path / "model"
    d.mkdir()
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(STORIES / f, d / f)
    cfg = json.loads((STORIES / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@real_data
@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"dtype": None}, torch.float32),  # no dtype in the config
        ({"dtype": "bfloat16"}, torch.bfloat16),
        ({"dtype": None, "torch_dtype": "float16"}, torch.float16),  # the older key
    ],
)
def test_the_default_dtype_is_the_checkpoints(tmp_path, changes, expected):
    d = _copy_with_config(tmp_path, **changes)
    model = load_model(d)
    assert {p.dtype for p in model.parameters()} == {expected}
    meta = load_model(d, weights=False)
    assert {p.dtype for p in meta.parameters()} == {expected} and {p.device.type for p in meta.parameters()} == {"meta"}


@real_data
def test_a_float64_checkpoint_needs_dtype(tmp_path):
    d = _copy_with_config(tmp_path, dtype="float64")
    with pytest.raises(UsageError, match="dtype is 'float64'.*pass --dtype"):
        load_model(d)
    assert {p.dtype for p in load_model(d, dtype="float32").parameters()} == {torch.float32}


@real_data
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_loading_in_half_precision_rounds_the_stored_weights_once(dtype):
    """Each weight is the stored fp32 value rounded to the dtype; the rotary tables stay fp32 (as transformers builds them)."""
    from safetensors.torch import load_file

    stored = load_file(STORIES / "model.safetensors")
    model = load_model(STORIES, dtype=dtype)
    want = getattr(torch, dtype)
    state = model.state_dict()
    assert {v.dtype for v in state.values()} == {want}
    for name, value in stored.items():
        assert torch.equal(state[name], value.to(want)), name
    assert {b.dtype for b in computed_buffers(model).values()} == {torch.float32}
    assert model.config.dtype == want


@real_data
def test_a_model_rebuilt_for_its_weights_allocates_no_parameters():
    """A depprune output is rebuilt with its parameters on meta (no random init, no full-size copy
    in any dtype) and only its computed buffers real, on the device; tied weights stay tied."""
    from pruners.io.checkpoint import build_for_weights, read_hf_config

    model = build_for_weights(read_hf_config(STORIES, False), STORIES / "config.json", torch.device("cpu"), torch.bfloat16, False, {})
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    buffers = computed_buffers(model)
    assert buffers and {b.device.type for b in buffers.values()} == {"cpu"}
    fresh = load_model(STORIES)
    assert all(torch.equal(b, computed_buffers(fresh)[n]) for n, b in buffers.items())  # computed as transformers does
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tie_word_embeddings


# -- bf16 end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(STORIES)


@pytest.fixture(scope="module")
def samples(tokenizer):
    return calibration_samples(CalibrationConfig(**CALIBRATION), tokenizer)


@pytest.fixture(scope="module")
def bf16_run(samples):
    """The bf16 model, a snapshot of it, and one pruning result per estimator."""
    model = load_model(STORIES, dtype="bfloat16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(p.requires_grad for p in model.parameters())  # as transformers builds them; pruning must keep it
    config = dict(ratio=0.2, calibration=CALIBRATION)
    results = {name: prune(model, PruneConfig(importance=name, **config), progress=False, samples=samples)
               for name in ESTIMATORS}
    return model, before, results


@real_data
@pytest.mark.slow
@pytest.mark.parametrize("name", ESTIMATORS)
def test_bf16_pruned_model_is_bf16(bf16_run, name):
    result = bf16_run[2][name]
    assert {p.dtype for p in result.model.parameters()} == {torch.bfloat16}
    assert result.params_after < result.params_before


@real_data
@pytest.mark.slow
def test_bf16_pruning_leaves_the_input_model_unchanged(bf16_run):
    model, before, _ = bf16_run
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]), k
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.training


@real_data
@pytest.mark.slow
@pytest.mark.parametrize("name", ESTIMATORS)
def test_scores_of_a_bf16_model_are_accumulated_in_at_least_float32(bf16_run, samples, name):
    """Whatever the estimator, the rows are float32 or wider and identical in dtype to an fp32 model's rows."""
    model = bf16_run[0]
    groups = analyze(model)[1]
    rows = member_scores(model, groups, PruneConfig(ratio=0.5, importance=name), samples, progress=False)
    fp32_rows = member_scores(load_model(STORIES), groups[:1], PruneConfig(ratio=0.5, importance=name), samples, progress=False)
    dtypes = {r.dtype for r in rows.values()}
    assert dtypes == {r.dtype for r in fp32_rows.values()} and dtypes <= {torch.float32, torch.float64}
    assert all(bool(torch.isfinite(r[~r.isnan()]).all()) for r in rows.values())


@real_data
@pytest.mark.slow
def test_l2_of_bf16_weights_is_summed_in_high_precision(bf16_run):
    """The l2 score of a bf16 model equals the norm of its (bf16-valued) weights taken in float64.

    Summed in bf16 the relative error would be up to ~2^-8 per addition (0.4% and more over 64
    terms); in float32 or wider it is below 1e-6.
    """
    model = bf16_run[0]
    groups = [g for g in analyze(model)[1] if g.kind == "mlp_channel"][:2]
    rows = member_scores(model, groups, PruneConfig(ratio=0.5), progress=False)
    params = dict(model.named_parameters())
    for g in groups:
        for i, m in enumerate(g.members):
            w = params[m.param].detach().double()
            per_pos = w.square().sum(dim=[d for d in range(w.ndim) if d != m.axis])  # (axis size,)
            expect = torch.zeros(g.n_units, dtype=torch.float64).index_add_(
                0, torch.as_tensor(m.unit_of), per_pos).sqrt()
            assert torch.allclose(rows[g.id][i].double(), expect, rtol=1e-6), (g.id, m.param)


@real_data
@pytest.mark.slow
def test_calibration_signals_of_a_bf16_model_are_float32_on_its_device(bf16_run, samples):
    model = bf16_run[0]
    sig = collect_signals(model, samples[:2], {"grad", "fisher", "activations"}, progress=False)
    device = next(model.parameters()).device
    tensors = [*sig.grad.values(), *sig.fisher.values(), *sig.act_sq.values(), *sig.act_sum.values()]
    assert sig.grad and sig.fisher and sig.act_sq
    assert {t.dtype for t in tensors} == {torch.float32} and {t.device for t in tensors} == {device}
    assert all(p.grad is None for p in model.parameters()) and {p.dtype for p in model.parameters()} == {torch.bfloat16}


@real_data
@pytest.mark.slow
def test_bf16_gradients_are_averaged_in_float32(bf16_run, samples):
    """The mean gradient is the float32 mean of the per-sample bf16 gradients, not a sum kept in bf16's ``.grad``."""
    model = bf16_run[0]
    names = ["model.layers.0.mlp.down_proj.weight", "model.layers.3.self_attn.q_proj.weight"]
    params = [dict(model.named_parameters())[n] for n in names]
    per_sample = []
    for ids in samples:  # independent reference: each sample's own gradient, as backward gives it in bf16
        logits = model(ids).logits  # (1, T, vocab) bf16
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
        per_sample.append(torch.autograd.grad(loss, params))
    sig = collect_signals(model, samples, {"grad"}, progress=False, params=names)
    for k, n in enumerate(names):
        grads = [g[k] for g in per_sample]
        assert {g.dtype for g in grads} == {torch.bfloat16} and sig.grad[n].dtype == torch.float32
        expect = torch.stack([g.double() for g in grads]).mean(0)
        assert torch.allclose(sig.grad[n].double(), expect, rtol=1e-6, atol=1e-12), n
        in_bf16 = sum(g / len(grads) for g in grads)  # what accumulating in the bf16 .grad would give
        assert not torch.allclose(in_bf16.double(), expect, rtol=1e-6, atol=1e-12)  # the check can tell them apart


@real_data
@pytest.mark.slow
@pytest.mark.parametrize("name", ESTIMATORS)
def test_bf16_save_and_reload_is_bit_identical(bf16_run, name, tmp_path):
    pruned = bf16_run[2][name]
    out = save_pruned(pruned.model, tmp_path / name, pruned.record, source=STORIES)
    header = read_safetensors_header(out / "model.safetensors")
    assert {dt for dt, _ in header.values()} == {"BF16"}
    buffers = computed_buffers(pruned.model)
    assert buffers  # the rotary tables: not saved, rebuilt on load in the dtype the model computed them in
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"

    loaded = load_model(out)  # the saved dtype, by default
    want, got = pruned.model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    for n, b in buffers.items():
        assert torch.equal(computed_buffers(loaded)[n], b), n
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, pruned.model(ids).logits)

    as_fp32 = load_model(out, dtype="float32")  # exact: every bf16 value is a float32 value
    assert all(torch.equal(as_fp32.state_dict()[k], want[k].float()) for k in want if want[k].is_floating_point())
    assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}


@real_data
@pytest.mark.slow
def test_bf16_perplexity_is_close_to_fp32(bf16_run, tokenizer, record_result):
    """The same checkpoint's perplexity in bf16 and in fp32 agree within 1%.

    Loading in bf16 rounds every weight once, by at most 2^-9 (0.2%) relative, and bf16 matmuls
    round their outputs by as much; the loss itself is taken in float32.  The per-token NLLs
    move by a few such units, in both directions, so the mean NLL -- log perplexity -- moves far
    less than 0.01 nats (measured: ~1e-4).  A real fault (weights cast wrongly, the rotary
    tables computed in bf16, the wrong model) moves it by far more: the 20%-pruned model's
    perplexity is 3-4x the dense one's.
    """
    bf16 = bf16_run[0]
    ppl16 = perplexity(bf16, tokenizer, VALID, max_tokens=PPL_TOKENS, progress=False)
    ppl32 = perplexity(load_model(STORIES), tokenizer, VALID, max_tokens=PPL_TOKENS, progress=False)
    record_result(f"stories260K perplexity, first {PPL_TOKENS} tokens of {VALID.name}: fp32 {ppl32:.4f}, bf16 {ppl16:.4f}")
    assert abs(np.log(ppl16) - np.log(ppl32)) < 0.01
    pruned = perplexity(bf16_run[2]["l2"].model, tokenizer, VALID, max_tokens=PPL_TOKENS, progress=False)
    assert np.log(pruned) - np.log(ppl32) > 0.5  # the tolerance would tell the pruned model from the dense one


@real_data
@pytest.mark.slow
def test_generation_speed_reports_bf16_memory(bf16_run):
    model = bf16_run[0]
    sp = generation_speed(model, prompt_len=8, gen_len=8, repeats=1)
    assert sp["param_bytes"] == 2 * sum(p.numel() for p in model.parameters())
    assert sp["tokens_per_s"] > 0


@real_data
def test_float16_runs_on_the_cpu(tokenizer):
    """torch 2.13 has CPU kernels for fp16 (so ``--dtype float16 --device cpu`` is not refused)."""
    model = load_model(STORIES, dtype="float16", device="cpu")
    result = prune(model, PruneConfig(ratio=0.2, importance="l2"), progress=False)
    assert {p.dtype for p in result.model.parameters()} == {torch.float16}
    ppl = perplexity(result.model, tokenizer, VALID, max_tokens=500, progress=False)
    assert np.isfinite(ppl)


# -- CUDA -------------------------------------------------------------------------------------------


@cuda_only
@real_data
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_on_cuda_end_to_end(dtype, samples, tokenizer, tmp_path):
    """Load straight onto the GPU, prune with calibration, save, reload there bit-identically."""
    device = resolve_device("cuda")
    model = load_model(STORIES, device=device, dtype=dtype)
    assert {p.device for p in model.parameters()} == {device} and {b.device for b in model.buffers()} == {device}
    for name in ("taylor-element", "wanda-sp"):
        result = prune(model, PruneConfig(ratio=0.2, importance=name, calibration=CALIBRATION), progress=False, samples=samples)
        assert {p.device for p in result.model.parameters()} == {device}
        assert {p.dtype for p in result.model.parameters()} == {getattr(torch, dtype)}
        out = save_pruned(result.model, tmp_path / name, result.record, source=STORIES)
        loaded = load_model(out, device=device)
        assert {p.device for p in loaded.parameters()} == {device}
        ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, result.model(ids).logits)
        assert np.isfinite(perplexity(loaded, tokenizer, VALID, max_tokens=500, progress=False))
    sp = generation_speed(model, prompt_len=8, gen_len=8, repeats=1)
    assert sp["peak_bytes"] >= sp["param_bytes"] > 0


# -- the command line ---------------------------------------------------------------------------


@real_data
def test_cli_prunes_and_evaluates_in_bfloat16(tmp_path, capsys):
    from pruners.cli import main

    out = tmp_path / "bf16"
    code = main(["prune", "--model", str(STORIES), "--ratio", "0.2", "--out", str(out), "--dtype", "bfloat16",
                 "--device", "cpu", "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert (report["dtype"], report["device"]) == ("bfloat16", "cpu")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {dtype for dtype, _ in read_safetensors_header(out / "model.safetensors").values()} == {"BF16"}
    assert main(["eval", "--model", str(out), "--ppl", str(VALID), "--max-tokens", "512", "--json", "--quiet"]) == 0
    ppl = json.loads(capsys.readouterr().out)["models"][str(out)]
    assert 1.0 < next(v for k, v in ppl.items() if k.startswith("ppl:")) < 100


@real_data
@pytest.mark.parametrize(
    "flags,message",
    [
        (["--dtype", "float64"], "--dtype 'float64'"),
        (["--device", "tpu"], "--device 'tpu' is not a device depprune can use; expected cpu, cuda or cuda:N"),
    ] + ([(["--device", "cuda"], "--device cuda: no CUDA device is available here")] if not torch.cuda.is_available() else []),
)
def test_cli_device_and_dtype_refusals_are_one_line(tmp_path, capsys, flags, message):
    from pruners.cli import main

    for argv in (["prune", "--model", str(STORIES), "--ratio", "0.2", "--out", str(tmp_path / "o")],
                 ["eval", "--model", str(STORIES), "--ppl", str(VALID)]):
        code = main([*argv, *flags, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
