"""What a prune costs at ~1B parameters: depprune against Torch-Pruning, each run in its own process.

A Llama of TinyLlama-1.1B's shape with random weights (``pruned_speed.SHAPE``, seed 0, fp32) is
pruned by both tools on the same units -- hidden and MLP channels, the units Torch-Pruning can
prune here -- to the same size: Torch-Pruning's ``pruning_ratio=0.2`` (its LLM example settings,
``round_to=32`` so that the hidden size stays a multiple of the 32 heads), and depprune at the
parameter count that gives.  Importances: L2 magnitude and first-order Taylor for both, plus
depprune's ``wanda-sp`` (activations, no gradients); the calibration estimators read the same
random samples (``--samples`` x 128 tokens): Torch-Pruning one sample per backward pass (its
example's way), depprune's Taylor up to 512 tokens side by side, one decoder layer at a time.
depprune runs as ``pruners.prune`` does by default (on a copy: the input model is left intact;
Taylor keeps the calibration activations that fit in the pruned model's size,
``activation_memory='auto'``), with ``activation_memory=0`` (every layer run forward again: the
least memory), and with ``inplace=True`` (the given model sliced, as Torch-Pruning does; 'auto'
keeps no activations there).

Each run records the wall time of the pruning call alone (the model loaded before it), the
process's RSS before it and its peak during it (VmHWM, reset before the call), the peak minus
the RSS before as a multiple of the weight bytes, scoring time per calibration token, and, for
depprune, how many times the model was exported (``torch.export``) during the call, and how many of
its decoder layers each export held (repeated layers are traced once: ``depgraph.repeats``).

It also measures how trace + groups and scoring grow with the number of layers (4 to 32) at a
fixed width (hidden 1024), each size in its own process.

    python benchmarks/prune_cost.py              # about 6 minutes on 2 cores, 20 GB of RAM
    python benchmarks/prune_cost.py --growth-only
    python benchmarks/prune_cost.py --report

Results: ``benchmarks/results/prune_cost.json`` and ``prune_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from compare_torch_pruning import peer_python, peer_versions, run_peer
from pruned_speed import SHAPE, build
from torch_pruning_worker import peak_rss, reset_peak  # both tools' memory, measured one way

RESULTS = Path(__file__).resolve().parent / "results"
TP_RATIO, SEQ_LEN = 0.2, 128
LEAN = "depprune, activation_memory 0"  # Taylor's layers all run forward twice: the least memory
RUNS = [("Torch-Pruning", "l2"), ("Torch-Pruning", "taylor"), ("depprune", "l2"), ("depprune", "taylor-element"),
        (LEAN, "taylor-element"), ("depprune", "wanda-sp"), ("depprune in place", "l2"),
        ("depprune in place", "taylor-element")]
REPEATED = {("Torch-Pruning", "l2"), ("depprune", "l2")}  # short rows, timed --repeat times: the median is reported
SAME = {"l2": "l2", "taylor-element": "taylor"}  # depprune's estimator -> Torch-Pruning's counterpart


def one_depprune(directory: str, importance: str, ratio: float, calibration: str, inplace: bool, lean: bool) -> dict:
    """Run in a fresh process: load, then time one ``pruners.prune`` call and count its exports."""
    import torch

    import depgraph.tracer
    from depgraph.repeats import layer_stack
    from pruners import PruneConfig, count_params, load_model, prune

    exports = []
    export = depgraph.tracer.export

    def counted(model, *args, **kwargs):  # an instrument of this benchmark: how often a prune exports which layers
        stack = layer_stack(model)
        exports.append(len(stack[1]) if stack else 0)
        return export(model, *args, **kwargs)

    depgraph.tracer.export = counted
    model = load_model(directory)
    samples = list(torch.load(calibration).split(1))  # N x (1, T)
    config = PruneConfig(ratio=ratio, importance=importance, kinds=["hidden_channel", "mlp_channel"],
                         calibration={"activation_memory": 0 if lean else "auto"})
    reset_peak()
    before = peak_rss()  # just reset: the RSS now
    start = time.perf_counter()
    result = prune(model, config, samples=samples if importance != "l2" else None, progress=False, inplace=inplace)
    seconds = time.perf_counter() - start
    return {"params": count_params(result.model), "prune_seconds": seconds, "rss_before_gb": before,
            "peak_rss_gb": peak_rss(), "exports": len(exports), "exported_layers": exports}


GROWTH_LAYERS = (4, 8, 16, 32)
GROWTH_SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 4,
                "head_dim": 64, "vocab_size": 32000, "tie_word_embeddings": False}


def one_growth(layers: int, samples: int) -> dict:
    """Run in a fresh process: trace + groups, then L2 and Taylor scoring, of a random Llama with ``layers`` layers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pruners import PruneConfig, analyze, score_groups, select_groups

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **GROWTH_SHAPE)).eval()
    ids = list(torch.randint(3, GROWTH_SHAPE["vocab_size"], (samples, SEQ_LEN)).split(1))  # N x (1, T)
    start = time.perf_counter()
    _, groups = analyze(model)
    out = {"layers": layers, "params": sum(p.numel() for p in model.parameters()),
           "analyze_s": time.perf_counter() - start, "samples": samples}
    chosen = select_groups(groups, ["attention", "mlp_channel"], None)
    for importance in ("l2", "taylor-element"):
        start = time.perf_counter()
        score_groups(model, chosen, PruneConfig(ratio=0.2, importance=importance), ids if importance != "l2" else None,
                     progress=False)
        out[f"score_s:{importance}"] = time.perf_counter() - start
    return out


def growth(args) -> list[dict]:
    rows = []
    for layers in GROWTH_LAYERS:
        print(f"growth: {layers} layers", flush=True)
        done = subprocess.run([sys.executable, __file__, "--growth-one", str(layers), str(args.samples)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(args) -> None:
    import torch

    python = peer_python()
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        print("building the dense model", flush=True)
        weights = build(work / "dense")  # parameters, fp32
        gen = torch.Generator().manual_seed(0)
        torch.save(torch.randint(3, SHAPE["vocab_size"], (args.samples, SEQ_LEN), generator=gen), work / "calibration.pt")
        target = None
        for tool, importance in RUNS:
            repeats = args.repeat if (tool, importance) in REPEATED else 1
            runs = []
            for r in range(repeats):
                print(f"{tool}: {importance}" + (f" (run {r + 1} of {repeats})" if repeats > 1 else ""), flush=True)
                if tool == "Torch-Pruning":
                    job = {"key": importance, "model": str(work / "dense"), "out": None, "importance": importance,
                           "units": "hidden_mlp", "pruning_ratio": TP_RATIO, "batch": 1, "target_params": 0,
                           "calibration": str(work / "calibration.pt"), "seed": 0}
                    row = run_peer(python, [job], None, threads)[importance]
                    if row.get("ok") and target is None:
                        target = row["params"]
                else:
                    cmd = [sys.executable, __file__, "--one", str(work / "dense"), importance,
                           str(1 - (target or round((1 - TP_RATIO) * weights)) / weights), str(work / "calibration.pt"),
                           str(tool.endswith("in place")), str(tool == LEAN)]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    row = ({"ok": True, **json.loads(done.stdout.splitlines()[-1])} if done.returncode == 0 else
                           {"ok": False, "error": done.stderr.strip().splitlines()[-1][:300]})
                runs.append(row)
                print(json.dumps(row), flush=True)
            rows.append({"tool": tool, "importance": importance, "dense_params": weights, "weight_gb": 4 * weights / 1e9,
                         "samples": args.samples if importance != "l2" else 0, "seq_len": SEQ_LEN, **median_run(runs)})
    data = {"machine": f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs ({platform.machine()}), {threads} threads, "
                       f"torch {torch.__version__}", "peer": peer_versions(python), "rows": rows, "growth": growth(args)}
    (RESULTS / "prune_cost.json").write_text(json.dumps(data, indent=1) + "\n")
    report(data)


def median_run(runs: list[dict]) -> dict:
    """The run of median pruning time (the first failure, if any run failed), with every run's time.

    >>> median_run([{"ok": True, "prune_seconds": t} for t in (3.0, 1.0, 2.0)])
    {'ok': True, 'prune_seconds': 2.0, 'prune_seconds_runs': [3.0, 1.0, 2.0]}
    """
    failed = [r for r in runs if not r.get("ok")]
    if failed or len(runs) == 1:
        return (failed or runs)[0]
    middle = sorted(runs, key=lambda r: r["prune_seconds"])[len(runs) // 2]
    return {**middle, "prune_seconds_runs": [r["prune_seconds"] for r in runs]}


def exports_cell(r: dict) -> str:
    """``2 (2 + 22 of 22)``: exports of a depprune prune and the decoder layers each one held."""
    if "exports" not in r:
        return "-"
    held = r.get("exported_layers")
    return f"{r['exports']}" + (f" ({' + '.join(map(str, held))} of {SHAPE['num_hidden_layers']})" if held else "")


def report(data: dict) -> None:
    rows = data["rows"]
    peer = {r["importance"]: r for r in rows if r["tool"] == "Torch-Pruning" and r.get("ok")}
    lines = ["# What a prune costs at 1.1B parameters", "",
             f"From `python benchmarks/prune_cost.py` ({data['machine']}; Torch-Pruning {data['peer']['torch-pruning']} "
             f"with transformers {data['peer']['transformers']} in its own venv). A Llama of TinyLlama-1.1B's shape, "
             "random fp32 weights, hidden + MLP channels pruned by both tools to the same size (Torch-Pruning's "
             f"`pruning_ratio={TP_RATIO}`, `round_to=32`). Each run in its own process; the pruning call alone is "
             "timed (model loaded and every weight read before). Memory: the process's peak RSS during the call "
             "(imports included, about 0.4 GB), over the weight bytes, and the same less the RSS before the call. "
             "Calibration: random token ids; Torch-Pruning one sample per backward pass, depprune's Taylor up to 512 "
             "tokens side by side, one decoder layer at a time, keeping the activations that fit in the pruned model's "
             "size (`activation_memory` 'auto'; 0: every layer run forward again; in place, 'auto' keeps none).", "",
             "| tool | importance | params after | prune s | vs Torch-Pruning (same importance) | s per calibration token "
             "| RSS before GB | peak GB | peak / weights | (peak - before) / weights | exports (layers each) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['tool']} | {r['importance']} | failed: {r.get('error', '')} | | | | | | | | |")
            continue
        twin = peer.get(SAME.get(r["importance"])) if r["tool"].startswith("depprune") else None
        vs = f"{r['prune_seconds'] / twin['prune_seconds']:.2f}x" if twin else "-"
        tokens = r["samples"] * r["seq_len"]
        per_token = f"{r['prune_seconds'] / tokens:.3f}" if tokens else "-"
        extra = (r["peak_rss_gb"] - r["rss_before_gb"]) / r["weight_gb"]
        runs = r.get("prune_seconds_runs")
        seconds = f"{r['prune_seconds']:.1f}" + (f" (median of {', '.join(f'{t:.1f}' for t in runs)})" if runs else "")
        lines.append(f"| {r['tool']} | {r['importance']} | {r['params']:,} | {seconds} | {vs} | {per_token} | "
                     f"{r['rss_before_gb']:.2f} | {r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / r['weight_gb']:.2f} | {extra:.2f} | "
                     f"{exports_cell(r)} |")
    if data.get("growth"):
        lines += ["", "## Growth with the number of layers", "",
                  f"A random Llama of hidden 1024 (MLP 2816, 16 heads / 4 KV heads, vocabulary 32,000), 4 to 32 layers, "
                  f"each in its own process: `pruners.analyze` (trace + groups on a meta copy), then `score_groups` of "
                  f"KV groups + MLP channels with L2 and with taylor-element on {data['growth'][0]['samples']} x "
                  f"{SEQ_LEN} tokens. Per layer: the time over the number of layers, flat when linear.", "",
                  "| layers | params | analyze s (per layer) | L2 scoring s (per layer) | Taylor scoring s (per layer) |",
                  "|---:|---:|---:|---:|---:|"]
        for g in data["growth"]:
            n = g["layers"]
            cells = [f"{g[k]:.2f} ({g[k] / n:.3f})" for k in ("analyze_s", "score_s:l2", "score_s:taylor-element")]
            lines.append(f"| {n} | {g['params'] / 1e6:.0f} M | " + " | ".join(cells) + " |")
    path = RESULTS / "prune_cost.md"
    notes = path.read_text().partition("<!-- notes -->")[2] if path.exists() else ""
    path.write_text("\n".join(lines) + "\n\n<!-- notes -->" + (notes or "\n"))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4, help="calibration samples of 128 tokens")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each L2 row (the shortest rows, the noisiest ratio)")
    ap.add_argument("--workdir", help="where the dense model is written (default: the system's temp dir)")
    ap.add_argument("--one", nargs=6, metavar=("DIR", "IMPORTANCE", "RATIO", "CALIBRATION", "INPLACE", "LEAN"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--growth-one", nargs=2, type=int, metavar=("LAYERS", "SAMPLES"), help=argparse.SUPPRESS)
    ap.add_argument("--growth-only", action="store_true", help="measure only the growth with layers, into the JSON")
    ap.add_argument("--report", action="store_true", help="only rewrite prune_cost.md from the JSON")
    args = ap.parse_args()
    if args.growth_one:
        print(json.dumps(one_growth(*args.growth_one)))
    elif args.growth_only:
        data = json.loads((RESULTS / "prune_cost.json").read_text())
        data["growth"] = growth(args)
        (RESULTS / "prune_cost.json").write_text(json.dumps(data, indent=1) + "\n")
        report(data)
    elif args.one:
        d, importance, ratio, calibration, inplace, lean = args.one
        print(json.dumps(one_depprune(d, importance, float(ratio), calibration, inplace == "True", lean == "True")))
    elif args.report:
        report(json.loads((RESULTS / "prune_cost.json").read_text()))
    else:
        run(args)


if __name__ == "__main__":
    main()
