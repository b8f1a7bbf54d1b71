"""Generation speed and memory of a model: tokens/s for a fixed prompt and generation length."""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from torch import nn


def generation_speed(model: nn.Module, prompt_len: int = 64, gen_len: int = 64, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Greedy generation of ``gen_len`` tokens after a random ``prompt_len`` prompt (KV cache on).

    The model runs where it is, in its own dtype.  Returns the median tokens/s over ``repeats``
    runs after one warm-up, the parameter memory (in the model's dtype), and peak memory: CUDA's
    max allocated on the model's GPU, the process's peak RSS on CPU.  A
    model whose context is shorter than ``prompt_len + gen_len`` gets half of it for each; the
    report says which lengths were used.
    """
    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None)
    if isinstance(context, int) and prompt_len + gen_len > context:  # a short-context model: both halves shrink
        prompt_len, gen_len = max(1, context // 2), max(1, context - max(1, context // 2))
    vocab = model.get_output_embeddings().weight.shape[0]
    low = 3 if vocab > 3 else 0  # skip the usual special ids when the vocabulary has more
    prompt = torch.randint(low, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed)).to(device)
    kwargs = dict(max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False)
    model.eval()
    with torch.no_grad():
        model.generate(prompt, **kwargs)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(prompt, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    times.sort()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss_bytes()
    return {
        "tokens_per_s": gen_len / times[len(times) // 2],
        "latency_ms_per_token": 1000 * times[len(times) // 2] / gen_len,
        "param_bytes": param_bytes,
        "peak_bytes": peak,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
    }


def peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` where Linux has it, else ``ru_maxrss``.

    ``ru_maxrss`` survives ``exec``: a process started from a large parent (fork, then exec) reports
    at least the parent's size at the fork.  ``VmHWM`` belongs to the process's own memory map.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def speed_in_own_process(path, device=None, dtype=None, *, trust_remote_code: bool = False,
                         allow_nonfinite: bool = False) -> dict[str, float]:
    """:func:`generation_speed` of the model saved at ``path``, loaded and measured in a fresh process of its own.

    A process's peak RSS covers every model it has held, so measuring several models in one
    process credits each with the largest before it; here ``peak_bytes`` is this model's alone
    (plus the imported libraries).  Also returns ``params``.  ``device`` and ``dtype`` are as for
    :func:`pruners.load_model`; errors (a model that does not load) are raised here.
    """
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from this one
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        job = pool.submit(_measure, str(path), None if device is None else str(device), dtype, trust_remote_code,
                          allow_nonfinite)
        return job.result()


def _measure(path: str, device: str | None, dtype, trust_remote_code: bool, allow_nonfinite: bool) -> dict[str, float]:
    from ..io.checkpoint import load_model
    from ..pipeline import count_params

    model = load_model(path, device, dtype=dtype, trust_remote_code=trust_remote_code, allow_nonfinite=allow_nonfinite)
    return {"params": count_params(model), **generation_speed(model)}
