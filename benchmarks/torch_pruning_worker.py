"""Torch-Pruning's side of ``benchmarks/compare_torch_pruning.py``, run by the peer's own venv.

That venv holds torch, transformers 4.49 and torch-pruning 1.6.1 (depprune needs transformers 5,
Torch-Pruning 1.6.1 cannot group attention heads there), so nothing of depprune is imported
here: this file is a script of its own, called as

    .venv-tp/bin/python benchmarks/torch_pruning_worker.py JOBS.json

``JOBS.json`` is a list of jobs; one JSON line per job goes to stdout, each job's outcome or its
error (a failure is a result, never a crash of the run).  A job prunes one model the way
Torch-Pruning's LLM example does (``examples/LLMs/prune_llm.py``: ``BasePruner``, L2 group
magnitude or Taylor importance, ``round_to=4``, heads as units with ``head_dim`` kept, the LM head
ignored, one ratio for every layer) to the ``pruning_ratio`` closest to a parameter target,
and saves it with ``save_pretrained`` after updating the config as that example does.

Job keys: ``model`` (a model directory, or one holding only ``config.json``: random weights from
``seed``), ``out`` (where the pruned model goes; ``out + ".probe.pt"`` gets its logits on the
first calibration sample), ``importance`` (``l2`` or ``taylor``), ``units`` (``hidden_mlp``:
hidden and MLP channels, or ``heads_hidden_mlp``: attention heads too), ``target_params``,
``calibration`` (a ``torch.save``'d ``(N, T)`` tensor of token ids, the samples depprune scores
with), ``seed``; optionally ``pruning_ratio`` (no search), ``batch`` (Taylor's backward batch,
8), ``round_to``, and ``out: null`` (measure only, write nothing).
"""

from __future__ import annotations

import faulthandler
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

ROUND_TO = 4  # Torch-Pruning's LLM example; by default the least multiple of it that the head count divides (below)
ROPE_INPUTS = ("q_proj", "k_proj", "qkv_proj", "query_key_value")  # outputs rotated by RoPE: its slice/cat makes their group grow without end


def load(job: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(job["model"])
    if (path / "model.safetensors").exists() or (path / "pytorch_model.bin").exists():
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    else:  # only config.json: random weights at that shape
        torch.manual_seed(job.get("seed", 0))
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), torch_dtype=torch.float32)
    return model.eval()


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter: counted once


def round_to(job: dict, config) -> int:
    """The job's ``round_to``, by default the least multiple of 4 that the head count divides.

    transformers 5 refuses a config whose ``hidden_size`` is not a multiple of
    ``num_attention_heads`` (even with an explicit ``head_dim``), so with the example's 4 a
    hidden size such as 44 for 8 heads is written but cannot be opened outside this venv.
    """
    return job.get("round_to") or math.lcm(ROUND_TO, config.num_attention_heads)


def make_pruner(model, ratio: float, importance, job: dict, example: torch.Tensor):
    import torch_pruning as tp

    num_heads, groups, ignored = {}, {}, [model.get_output_embeddings()]
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "q_proj":
            num_heads[module] = config.num_attention_heads
        elif leaf in ("k_proj", "v_proj"):
            num_heads[module] = kv_heads
        elif leaf == "qkv_proj":
            num_heads[module] = config.num_attention_heads
        elif leaf == "gate_up_proj":
            groups[module] = 2
        if job["units"] == "hidden_mlp" and leaf in ROPE_INPUTS:
            ignored.append(module)
    heads = job["units"] == "heads_hidden_mlp"
    return tp.pruner.BasePruner(
        model, example_inputs=example, importance=importance, global_pruning=False, pruning_ratio=ratio,
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=heads, prune_head_dims=False,
        head_pruning_ratio=ratio if heads else 0.0, out_channel_groups=groups, round_to=round_to(job, config),
        output_transform=lambda out: out.logits,
    )


def update_config(model, head_dim: int | None) -> None:
    """What Torch-Pruning's LLM example does after pruning: the config follows the new shapes."""
    config = model.config
    config.hidden_size = model.get_input_embeddings().weight.shape[1]
    if head_dim is not None:
        config.head_dim = head_dim  # kept: heads are whole units (its default would follow hidden_size)
    layer = next(m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == "0")
    mods = dict(layer.named_modules())
    q, k = mods.get("self_attn.q_proj"), mods.get("self_attn.k_proj")
    if q is not None and k is not None and head_dim:
        config.num_attention_heads = q.out_features // head_dim
        config.num_key_value_heads = k.out_features // head_dim
    for name, m in mods.items():
        if name.endswith(("gate_proj", "fc1", "dense_h_to_4h", "c_fc")):
            config.intermediate_size = m.weight.shape[0] if not name.endswith("c_fc") else m.weight.shape[1]
        elif name.endswith("gate_up_proj"):
            config.intermediate_size = m.weight.shape[0] // 2


def search_ratio(job: dict, example: torch.Tensor) -> tuple[float, int]:
    """The pruning_ratio whose pruned size is closest to the target (sizes do not depend on the importance)."""
    import torch_pruning as tp

    def size(ratio: float) -> int:
        model = load(job)
        pruner = make_pruner(model, ratio, tp.importance.GroupMagnitudeImportance(p=2), job, example)
        pruner.step()
        return params(model)

    lo, hi = 0.0, 0.95
    sizes = {lo: params(load(job)), hi: size(hi)}
    for _ in range(12):
        mid = (lo + hi) / 2
        sizes[mid] = size(mid)
        if sizes[mid] > job["target_params"]:
            lo = mid
        else:
            hi = mid
    best = min(sizes, key=lambda r: (abs(sizes[r] - job["target_params"]), r))
    return best, sizes[best]


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def peak_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def run(job: dict) -> dict:
    import torch_pruning as tp

    samples = torch.load(job["calibration"])  # (N, T)
    example = samples[:1, :32]
    if job.get("pruning_ratio") is not None:
        ratio, planned = job["pruning_ratio"], None
    else:
        ratio, planned = search_ratio(job, example)
    model = load(job)
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():  # read every weight once: from_pretrained maps the file, so untouched weights are not resident yet
        for p in model.parameters():
            p.sum()
    reset_peak()
    rss_before = peak_rss()
    start = time.perf_counter()
    if job["importance"] == "taylor":
        importance = tp.importance.GroupTaylorImportance()
        model.zero_grad()
        for ids in samples.split(job.get("batch", 8)):  # (batch, T)
            model(ids, labels=ids).loss.backward()  # Taylor reads the accumulated .grad
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
    pruner = make_pruner(model, ratio, importance, job, example)
    pruner.step()
    seconds = time.perf_counter() - start
    peak = peak_rss()
    model.zero_grad(set_to_none=True)
    update_config(model, head_dim)
    measured = {"params": params(model), "pruning_ratio": ratio, "planned_params": planned, "prune_seconds": seconds,
                "peak_rss_gb": peak, "rss_before_gb": rss_before, "hidden": model.config.hidden_size,
                "intermediate": getattr(model.config, "intermediate_size", None),
                "heads": getattr(model.config, "num_attention_heads", None), "round_to": round_to(job, model.config)}
    if job.get("out") is None:  # a cost measurement: nothing written
        return measured
    with torch.no_grad():
        logits = model(samples[:1]).logits  # (1, T, vocab)
    model.save_pretrained(job["out"])
    torch.save(logits, job["out"] + ".probe.pt")
    try:  # does it reload here, under transformers 4.49?
        with torch.no_grad():
            again = type(model).from_pretrained(job["out"], torch_dtype=torch.float32).eval()
            reload_peer = f"max logit difference {(again(samples[:1]).logits - logits).abs().max().item():.2g}"
    except Exception as e:  # the config update of Torch-Pruning's example covers Llama-like layouts only
        reload_peer = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return {**measured, "reload_peer": reload_peer}


def main() -> None:
    """``worker.py JOBS.json [SECONDS]``: past SECONDS the stacks are printed and the process exits (a hang is a row).

    Threads: torch's default, or ``OMP_NUM_THREADS`` as the caller sets it.
    """
    if len(sys.argv) > 2:
        faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)
    for job in json.loads(Path(sys.argv[1]).read_text()):
        try:
            result = {"ok": True, **run(job)}
        except Exception as e:  # a failure is a row of the comparison
            last = traceback.extract_tb(e.__traceback__)[-1]
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300], "where": f"{last.filename}:{last.lineno}"}
        print(json.dumps({"key": job["key"], **result}), flush=True)


if __name__ == "__main__":
    main()
