"""Benchmark: peak memory and time of calibration-based scoring on a ~1.1B-parameter Llama.

A ``transformers.LlamaForCausalLM`` with TinyLlama-1.1B's shape is built from a ``LlamaConfig``
(random weights, fp32, eval mode, CPU; nothing is downloaded), traced and grouped with
:func:`pruners.pipeline.analyze`, and its ``attention`` and ``mlp_channel`` groups are scored
with :func:`pruners.pipeline.score_groups` on random calibration samples (10 x 128 tokens by
default) -- exactly the library's path: :func:`pruners.importance.collect_signals` (one
backward per sample, gradients accumulated in the parameters' ``.grad``), then the estimator
over every group -- or, for an estimator scored one decoder layer at a time (``taylor-element``:
:mod:`pruners.importance.layerwise`), ``score_groups`` with the samples, collection and estimator
in one call, measured as the collection phase.

Every estimator runs in its own fresh subprocess.  In it the benchmark records

* the RSS before the model is built (after all imports) -- the baseline;
* the weight bytes: ``numel * element_size`` summed over the unique parameters;
* the peak RSS while scoring (signal collection and estimator separately): the kernel's
  high-water mark ``VmHWM``, reset just before each phase through ``/proc/self/clear_refs``
  (which restarts ``ru_maxrss`` too), cross-checked by a thread that samples ``VmRSS`` every 20 ms;
* the wall time of signal collection and of the estimator, and the collection time per
  calibration token.

The memory attributable to scoring is ``peak RSS - baseline RSS`` (weights + gradients and
other signals + one sample's activations + estimator temporaries), reported as a multiple of
the weight bytes.  Targets (taylor-element on the 1.1B model): <= 2.3 x weight bytes (issue 4),
<= 1.3 x (issue 12).
``taylor-second`` (diagonal Fisher) and ``wanda-sp`` (no gradients) are run for comparison.

Run it (after ``pip install -e .``) from the repository root; it needs about 20 GB of RAM
for the 1.1B model (taylor-second is the largest) and a few minutes per estimator on 2 CPUs::

    python benchmarks/taylor_memory.py                       # all estimators, results in benchmarks/results/
    python benchmarks/taylor_memory.py --small --out /tmp/b  # a small model: a smoke run in seconds
    python benchmarks/taylor_memory.py --estimators taylor-element
    python benchmarks/taylor_memory.py --samples 4 --seq-len 64

It writes ``taylor_memory.json`` (raw numbers plus machine info) and ``taylor_memory.md``
(a table with PASS/FAIL against the target) into the output directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

SHAPES: dict[str, dict] = {
    # TinyLlama-1.1B's shape: 1.10 B parameters, untied embeddings, GQA (32 query heads, 4 KV heads)
    "tinyllama-1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=2048,
    ),
    # a smoke-test shape (~7 M parameters)
    "small": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=8000,
        max_position_embeddings=512,
    ),
}

ESTIMATORS = ["taylor-element", "taylor-second", "wanda-sp"]
TARGET_ESTIMATOR, TARGET_SHAPE = "taylor-element", "tinyllama-1.1b"
TARGET_RATIOS = ((2.3, "issue 4"), (1.3, "issue 12: weights + one layer's gradients + activations"))
KINDS = ["attention", "mlp_channel"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- memory probes


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_kib() -> int:
    return _status_kib("VmRSS")


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples ``VmRSS`` in a background thread; ``take()`` returns the peak since the last take."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self._peak = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            r = rss_kib()
            with self._lock:
                self._peak = max(self._peak, r)
            time.sleep(self.interval_s)

    def take(self) -> int:
        r = rss_kib()
        with self._lock:
            peak, self._peak = max(self._peak, r), r
        return peak

    def __enter__(self):
        self._peak = rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- child mode


def _build(shape: str):
    """The random-weight model of ``shape`` in fp32, with the time and resident memory its construction took."""
    import torch
    import transformers

    LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM  # resolve lazy imports
    torch.manual_seed(0)
    rss_before = rss_kib()
    t0 = time.perf_counter()
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape])).float().eval()
    return model, {"build_s": time.perf_counter() - t0, "rss_before_build_kib": rss_before, "rss_after_build_kib": rss_kib()}


def _peaks(sampler, hwm_ok: bool) -> tuple[int | None, int | None]:
    """The phase's resident-memory peak: kernel high-water mark (when it could be reset) and sampled."""
    return (_status_kib("VmHWM") if hwm_ok else None), sampler.take()


def _collect_phase(model, chosen, needs, samples) -> tuple[object, dict]:
    """Calibration signals for ``chosen`` (``pruners.group_signals``, the library's call), timed and measured."""
    from pruners import group_signals

    hwm_ok = reset_hwm()
    with RssSampler() as sampler:
        t, c = time.perf_counter(), time.process_time()
        signals = group_signals(model, chosen, needs, samples, progress=False) if needs else None
        phase = {"collect_s": time.perf_counter() - t, "collect_cpu_s": time.process_time() - c}
        phase["collect_peak_hwm_kib"], phase["collect_peak_sampled_kib"] = _peaks(sampler, hwm_ok)
    phase["rss_after_collect_kib"] = rss_kib()
    phase["hwm_reset_ok"] = hwm_ok
    return signals, phase


def _estimator_phase(model, chosen, config, signals) -> tuple[dict, dict]:
    """The estimator's scores from collected ``signals`` (``pruners.score_groups``), timed and measured."""
    from pruners import score_groups

    hwm_ok = reset_hwm()
    with RssSampler() as sampler:
        t = time.perf_counter()
        scores = score_groups(model, chosen, config, progress=False, signals=signals)
        phase = {"estimator_s": time.perf_counter() - t}
        phase["estimator_peak_hwm_kib"], phase["estimator_peak_sampled_kib"] = _peaks(sampler, hwm_ok)
    phase["hwm_reset_ok"] = phase.get("hwm_reset_ok", True) and hwm_ok
    return scores, phase


def _layerwise_phase(model, chosen, config, samples) -> tuple[dict, dict]:
    """Signals and scores in one call (``pruners.score_groups`` with the samples): the library's
    path for an estimator scored one decoder layer at a time, timed and measured as the collect phase."""
    from pruners import score_groups

    hwm_ok = reset_hwm()
    with RssSampler() as sampler:
        t, c = time.perf_counter(), time.process_time()
        scores = score_groups(model, chosen, config, samples, progress=False)
        phase = {"collect_s": time.perf_counter() - t, "collect_cpu_s": time.process_time() - c}
        phase["collect_peak_hwm_kib"], phase["collect_peak_sampled_kib"] = _peaks(sampler, hwm_ok)
    phase["rss_after_collect_kib"] = rss_kib()
    phase["hwm_reset_ok"] = hwm_ok
    return scores, phase


def run_one(estimator: str, shape: str, n_samples: int, seq_len: int) -> dict:
    """Child mode: build the model, score it with ``estimator``, report memory and time."""
    import torch

    from pruners import PruneConfig, analyze, make_estimator, needs_of, select_groups

    model, built = _build(shape)
    unique = list({p.data_ptr(): p for p in model.parameters()}.values())
    weight_bytes = sum(p.numel() * p.element_size() for p in unique)
    num_params = sum(p.numel() for p in unique)

    t0 = time.perf_counter()
    tr, groups = analyze(model)  # the trace stays alive during scoring, as in pruners.prune
    chosen = select_groups(groups, KINDS)
    analyze_s = time.perf_counter() - t0
    # scoring differentiates only the weights of the scored groups (not embeddings / LM head)
    named = dict(model.named_parameters())
    scored = {m.param for g in chosen for m in g.members if m.param in named}
    scored_bytes = {n: named[n].numel() * named[n].element_size() for n in scored}
    largest_bytes = max(scored_bytes.values())

    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    samples = [torch.randint(0, vocab, (1, seq_len), generator=gen) for _ in range(n_samples)]
    config = PruneConfig(ratio=0.5, importance=estimator)  # the ratio is not used: scores only

    rss_before_scoring = rss_kib()
    made = make_estimator(estimator)
    layerwise = needs_of(made) == {"grad"} and getattr(made, "member_wise", False)
    if layerwise:  # gradients taken and scored one layer at a time: collection and estimator are one call
        scores, phases = _layerwise_phase(model, chosen, config, samples)
        est = {"estimator_s": 0.0, "estimator_peak_hwm_kib": phases["collect_peak_hwm_kib"],
               "estimator_peak_sampled_kib": phases["collect_peak_sampled_kib"], "hwm_reset_ok": True}
    else:
        signals, phases = _collect_phase(model, chosen, needs_of(made), samples)
        scores, est = _estimator_phase(model, chosen, config, signals)
    from depgraph.groups import layer_of

    per_layer: dict = {}
    for n, b in scored_bytes.items():
        per_layer[layer_of(n)] = per_layer.get(layer_of(n), 0) + b
    hwm_ok = phases["hwm_reset_ok"] and est["hwm_reset_ok"]
    score_peak_hwm, score_peak_sampled = est["estimator_peak_hwm_kib"], est["estimator_peak_sampled_kib"]
    rss_before_build, rss_after_build, build_s = built["rss_before_build_kib"], built["rss_after_build_kib"], built["build_s"]
    estimator_s = est["estimator_s"]
    peaks = [v for v in (phases["collect_peak_hwm_kib"], phases["collect_peak_sampled_kib"],
                         score_peak_hwm, score_peak_sampled) if v is not None]
    peak = max(peaks)
    tokens = n_samples * seq_len
    return {
        "estimator": estimator,
        "layerwise": layerwise,
        "largest_layer_scored_bytes": max(per_layer.values()),
        "kept_inputs_bytes": n_samples * seq_len * model.config.hidden_size * 4 * model.config.num_hidden_layers,
        "layers": model.config.num_hidden_layers,
        "shape": shape,
        "num_params": num_params,
        "weight_bytes": weight_bytes,
        "n_samples": n_samples,
        "seq_len": seq_len,
        "tokens": tokens,
        "groups_scored": len(chosen),
        "units_scored": int(sum(len(s) for s in scores.values())),
        "all_scores_finite": bool(all(torch.isfinite(torch.as_tensor(s)).all() for s in scores.values())),
        "torch_threads": torch.get_num_threads(),
        "build_s": build_s,
        "analyze_s": analyze_s,
        "collect_s": phases["collect_s"],
        "collect_cpu_s": phases["collect_cpu_s"],
        "estimator_s": estimator_s,
        "total_scoring_s": phases["collect_s"] + estimator_s,
        "collect_s_per_token": phases["collect_s"] / tokens,
        "rss_before_build_kib": rss_before_build,
        "rss_after_build_kib": rss_after_build,
        "rss_before_scoring_kib": rss_before_scoring,
        "rss_after_collect_kib": phases["rss_after_collect_kib"],
        "hwm_reset_ok": hwm_ok,
        "collect_peak_hwm_kib": phases["collect_peak_hwm_kib"],
        "collect_peak_sampled_kib": phases["collect_peak_sampled_kib"],
        "estimator_peak_hwm_kib": score_peak_hwm,
        "estimator_peak_sampled_kib": score_peak_sampled,
        "peak_rss_kib": peak,
        # Linux's ru_maxrss is the same high-water mark as VmHWM, so the resets above restart it too:
        # it covers the estimator phase only (when the reset worked), a cross-check of that phase's peak
        "ru_maxrss_since_reset_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "scored_param_bytes": sum(scored_bytes.values()),
        "largest_param_bytes": largest_bytes,
        "largest_params": sorted(n for n, b in scored_bytes.items() if b == largest_bytes)[:2],
        "attributable_bytes": (peak - rss_before_build) * 1024,
        "after_collect_ratio_to_weights": (phases["rss_after_collect_kib"] - rss_before_build) * 1024 / weight_bytes,
        "ratio_to_weights": (peak - rss_before_build) * 1024 / weight_bytes,
        "collect_ratio_to_weights": (max(v for v in (phases["collect_peak_hwm_kib"], phases["collect_peak_sampled_kib"])
                                         if v is not None) - rss_before_build) * 1024 / weight_bytes,
        "estimator_ratio_to_weights": (max(v for v in (score_peak_hwm, score_peak_sampled) if v is not None)
                                       - rss_before_build) * 1024 / weight_bytes,
    }


def run_activations(shape: str, seq_len: int) -> dict:
    """Child mode: bytes autograd saves for backward in one calibration sample's forward pass
    (unique storages that are not parameters), plus the logits -- "one batch of activations"."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPES[shape])).float().eval()
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in param_storages:
            saved[st.data_ptr()] = st.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids).logits  # the loss as pruners.importance.signals computes it
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
    return {"saved_activation_bytes": sum(saved.values()), "logits_bytes": logits.numel() * logits.element_size(),
            "loss": float(loss)}


# --------------------------------------------------------------------------- parent mode


def child(args: list[str]) -> dict:
    """Run this script in a fresh Python process and parse the JSON it prints last."""
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}", "stderr": proc.stderr[-8000:], "process_wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    result["loadavg_1min_before"] = load
    return result


def machine_info() -> dict:
    import torch
    import transformers

    with open("/proc/meminfo") as f:
        mem_total_kib = int(f.readline().split()[1])
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gb": mem_total_kib * 1024 / 1e9,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "loadavg_at_start": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def evaluate(results: dict) -> list[dict]:
    if results["shape"] != TARGET_SHAPE or TARGET_ESTIMATOR not in results["estimators"]:
        return []
    r = results["estimators"][TARGET_ESTIMATOR]
    out = []
    for limit, source in TARGET_RATIOS:
        target = f"{TARGET_ESTIMATOR} peak RSS - baseline <= {limit} x weight bytes ({source})"
        if "error" in r:
            out.append({"target": target, "measured": None, "status": "FAIL (crashed)"})
            continue
        ratio = r["ratio_to_weights"]
        out.append({"target": target, "measured": round(ratio, 3), "status": "PASS" if ratio <= limit else "FAIL"})
    return out


def gb(kib: float) -> str:
    return f"{kib * 1024 / 1e9:.2f}"


def breakdown(results: dict) -> list[str]:
    """Where the target estimator's peak goes, as multiples of the weight bytes."""
    r, act = results["estimators"].get(TARGET_ESTIMATOR), results.get("activations", {})
    if r is None or "error" in r or "error" in act or not act:
        return []
    w = r["weight_bytes"]
    if r.get("layerwise"):
        parts = [
            ("weights (fp32)", 1.0),
            ("gradients of one decoder layer's scored weights (fp32), scored and dropped before the next layer's",
             r["largest_layer_scored_bytes"] / w),
            (f"every layer's input kept per sample ({r['n_samples']} x {results['seq_len']} tokens x hidden x "
             f"{r['layers']} layers, fp32)", r["kept_inputs_bytes"] / w),
            (f"activations autograd saves for one layer of one {results['seq_len']}-token sample, and its logits "
             "(measured in a separate process: the whole model's / layers); the samples run side by side in "
             "micro-batches, so the peak holds a few times this", (act["saved_activation_bytes"] / r["layers"]
                                                                  + act["logits_bytes"]) / w),
        ]
    else:
        parts = [
            ("weights (fp32)", 1.0),
            ("gradients (fp32, accumulated in `.grad`, only for the weights of the scored groups: "
             "no embedding or LM-head gradient)", r.get("scored_param_bytes", w) / w),
            (f"activations autograd saves for one {results['seq_len']}-token sample, logits included "
             "(measured in a separate process)", (act["saved_activation_bytes"] + act["logits_bytes"]) / w),
            ("the largest scored parameter's fresh gradient, alive until backward adds it into `.grad` "
             f"({r['largest_param_bytes'] / 1e9:.2f} GB: {' / '.join(f'`{n}`' for n in r['largest_params'])})",
             r["largest_param_bytes"] / w),
        ]
    phase = "signal collection" if r["collect_ratio_to_weights"] >= r["estimator_ratio_to_weights"] else "the estimator"
    rest = r["ratio_to_weights"] - sum(v for _, v in parts)
    where = (f"Signals and scores are one call, one decoder layer's gradients at a time (peak "
             f"{r['collect_ratio_to_weights']:.3f}x; after it, with the scores only, RSS is "
             f"{r['after_collect_ratio_to_weights']:.3f}x). `score_groups` alone keeps no activations from the "
             "forward pass (`calibration.activation_memory` 'auto' is 0 outside a prune): every layer runs forward "
             "again for its backward pass. In a prune, 'auto' keeps up to the pruned model's size of them (faster; the "
             "prune's peak, the source and the pruned model side by side, is not raised: `prune_cost.md`)."
             if r.get("layerwise") else
             f"The peak is reached during {phase} (collection {r['collect_ratio_to_weights']:.3f}x, estimator "
             f"{r['estimator_ratio_to_weights']:.3f}x; after collection, with only the gradients held, RSS is "
             f"{r['after_collect_ratio_to_weights']:.3f}x).")
    lines = ["", f"## Where `{TARGET_ESTIMATOR}`'s peak goes", "", where, "",
             "| part | x weight bytes |", "|---|---:|"]
    lines += [f"| {name} | {v:.3f} |" for name, v in parts]
    lines += [f"| rest: gradients of the logits, freed-but-kept heap memory of earlier samples (glibc), "
              f"the traced graph and groups, Python objects (peak minus the rows above) | {rest:.3f} |",
              f"| **measured peak - baseline** | **{r['ratio_to_weights']:.3f}** |"]
    return lines


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Calibration scoring memory benchmark",
        "",
        f"Generated by `{results['command']}` on {m['date']}: "
        f"{m['cpu_count']} CPUs ({m['processor']}), {m['mem_total_gb']:.1f} GB RAM, no GPU; "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; "
        f"1-min load average at start {m['loadavg_at_start'][0]:.2f}.",
        "",
        f"Model: `LlamaForCausalLM` with the `{results['shape']}` shape, random weights, fp32, eval mode, CPU. "
        f"Groups scored: {', '.join(KINDS)}. Calibration: {results['n_samples']} random samples x "
        f"{results['seq_len']} tokens, via `pruners.pipeline.score_groups` (aggregation `sum`). "
        "Each estimator runs in a fresh process. "
        "**Baseline** is the RSS before the model is built (all imports done). **Peak** is the highest RSS "
        "over signal collection and the estimator: the kernel's `VmHWM`, reset before each phase, and a "
        "20 ms `VmRSS` sampler; the larger is used. **Attributable** = peak - baseline (weights + signals + "
        "activations + estimator temporaries); **ratio** = attributable / weight bytes, shown for the whole "
        "scoring step and for its two phases. GB = 10^9 bytes. "
        "**s/token** = signal-collection wall time / calibration tokens; CPU s is the process's CPU time "
        "over collection (both threads), so wall time well above CPU s / 2 means the machine was busy.",
        "",
        "| estimator | params | weight GB | baseline RSS GB | RSS after build GB | peak RSS GB "
        "| attributable GB | ratio | collect / estimator ratio | collect s (CPU s) | s/token | estimator s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["estimators"].items():
        if "error" in r:
            lines.append(f"| {name} | | | | | | | crashed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {name} | {r['num_params'] / 1e9:.3f} B | {r['weight_bytes'] / 1e9:.2f} | {gb(r['rss_before_build_kib'])} "
            f"| {gb(r['rss_after_build_kib'])} | {gb(r['peak_rss_kib'])} | {r['attributable_bytes'] / 1e9:.2f} "
            f"| **{r['ratio_to_weights']:.3f}** | {r['collect_ratio_to_weights']:.3f} / {r['estimator_ratio_to_weights']:.3f} "
            f"| {r['collect_s']:.1f} ({r['collect_cpu_s']:.0f}) | {r['collect_s_per_token']:.4f} | {r['estimator_s']:.1f} |"
        )
    targets = results.get("targets", [])
    lines += ["", "## Targets", ""]
    if not targets:
        lines.append(f"Not judged: the targets apply to `{TARGET_ESTIMATOR}` on `{TARGET_SHAPE}`.")
    else:
        lines += ["| target | measured | result |", "|---|---:|---|"]
        for t in targets:
            measured = "—" if t["measured"] is None else f"{t['measured']:.3f}"
            lines.append(f"| {t['target']} | {measured} | **{t['status']}** |")
    lines += breakdown(results)
    if results.get("notes"):
        lines += ["", "## Notes", "", *results["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", nargs="+", default=ESTIMATORS, metavar="NAME",
                        help=f"registered estimators to run, each in its own process (default: {' '.join(ESTIMATORS)})")
    parser.add_argument("--small", action="store_true", help="use a ~7 M-parameter model (a quick smoke run)")
    parser.add_argument("--samples", type=int, default=10, help="calibration samples (default 10)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sample (default 128)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--note", action="append", default=[], help="a line added to the report's notes (repeatable)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: the estimator to run
    parser.add_argument("--activations", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    shape = "small" if args.small else TARGET_SHAPE

    if args.one:
        print(json.dumps(run_one(args.one, shape, args.samples, args.seq_len)))
        return 0
    if args.activations:
        print(json.dumps(run_activations(shape, args.seq_len)))
        return 0

    shared = [*(["--small"] if args.small else []), "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    command = " ".join(["python benchmarks/taylor_memory.py", *(["--small"] if args.small else []),
                        *(["--estimators", *args.estimators] if args.estimators != ESTIMATORS else []),
                        *(["--samples", str(args.samples)] if args.samples != 10 else []),
                        *(["--seq-len", str(args.seq_len)] if args.seq_len != 128 else [])])
    results: dict = {"machine": machine_info(), "command": command, "shape": shape, "n_samples": args.samples,
                     "seq_len": args.seq_len, "estimators": {}}
    for name in args.estimators:
        print(f"{name} on {shape} ...", flush=True)
        r = child(["--one", name, *shared])
        results["estimators"][name] = r
        if "error" in r:
            print(f"  crashed ({r['error']}):\n{r['stderr']}", flush=True)
        else:
            print(f"  baseline {gb(r['rss_before_build_kib'])} GB, weights {r['weight_bytes'] / 1e9:.2f} GB, "
                  f"peak {gb(r['peak_rss_kib'])} GB -> ratio {r['ratio_to_weights']:.3f}; "
                  f"collect {r['collect_s']:.1f} s ({r['collect_s_per_token']:.4f} s/token), "
                  f"estimator {r['estimator_s']:.1f} s", flush=True)
    print("activations of one sample ...", flush=True)
    results["activations"] = child(["--activations", *shared])
    results["targets"] = evaluate(results)
    results["notes"] = args.note

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "taylor_memory.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "taylor_memory.md").write_text(markdown(results))
    print(markdown(results))
    ok = all("error" not in r for r in results["estimators"].values()) and all(t["status"] == "PASS" for t in results["targets"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
