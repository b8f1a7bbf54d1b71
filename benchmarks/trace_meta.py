"""Benchmark: trace full-size Llama shapes on the meta device and find their prunable groups.

For each model shape the model is built from a ``transformers.LlamaConfig`` under
``torch.device("meta")`` (no weights are downloaded or materialised), then
:func:`depgraph.trace` (repeated decoder layers traced once) and :func:`depgraph.groups.find_groups` are
run, then the same with every layer traced (``repeats=False``) for comparison.  Each model runs in its
own fresh subprocess so that peak RSS is per model; a baseline subprocess that only imports
torch, transformers and depgraph is measured too, so the import cost can be told apart.

Run it (after ``pip install -e .``) from the repository root::

    python benchmarks/trace_meta.py                      # all models, results in benchmarks/results/
    python benchmarks/trace_meta.py --models llama-2-7b  # a subset
    python benchmarks/trace_meta.py --out /tmp/bench     # another output directory
    python benchmarks/trace_meta.py --repeat 5           # runs per model (default 3; median reported)

It writes ``trace_meta.json`` (raw numbers plus machine info) and ``trace_meta.md`` (a table
with PASS/FAIL against the targets) into the output directory.

On a small machine, run it while nothing else is busy: the CPU-time column shows how much
of the wall time was contention.

The whole command is timed too, as a user meets it: ``depprune inspect`` of each full-size shape
(a directory holding only its ``config.json``) as a process of its own, start to exit, beside a
process that only imports torch and transformers (the baseline) and one that only builds the
shape and exports it (torch.export alone); ``--process-runs`` of each, the median reported.

Targets: llama-2-7b traces and groups in <= 20 s total with <= 1.5 GB peak RSS;
llama-2-70b in <= 60 s total; ``depprune inspect`` of llama-2-70b, the whole process, <= 5 s and
faster than a process that only exports it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SHAPES: dict[str, dict] = {
    "llama-2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "llama-2-70b": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "llama-3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
}

# growth: llama-2-7b's width at 4, 8, 16 and 32 layers (is trace + groups linear in the layers?)
GROWTH = {f"7b-width-{n}-layers": dict(SHAPES["llama-2-7b"], num_hidden_layers=n) for n in (4, 8, 16, 32)}
ALL_SHAPES = {**SHAPES, **GROWTH}

# (model, metric, limit, human-readable description)
TARGETS = [
    ("llama-2-7b", "total_s", 20.0, "total wall time <= 20 s"),
    ("llama-2-7b", "peak_rss_gb", 1.5, "peak RSS <= 1.5 GB"),
    ("llama-2-70b", "total_s", 60.0, "total wall time <= 60 s"),
    ("llama-2-70b", "total_s", 5.0, "build + trace + groups <= 5 s (issue 12: trace each distinct layer once)"),
    ("llama-2-7b", "export_ratio", 1.0, "trace + groups <= 1 x torch.export alone"),
    ("llama-2-70b", "export_ratio", 1.0, "trace + groups <= 1 x torch.export alone (faster than exporting it at all)"),
    ("llama-2-70b", "inspect_process_s", 5.0, "`depprune inspect`, the whole process, <= 5 s"),
    ("llama-2-70b", "process_ratio", 1.0, "`depprune inspect` process <= 1 x a process that only exports it"),
]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def peak_rss_kib() -> int:
    """Peak resident set size of this process: ``VmHWM`` (``ru_maxrss`` survives exec and counts the parent's size)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_baseline() -> dict:
    """Child mode: import only, report the RSS that costs."""
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import depgraph  # noqa: F401
    import depgraph.groups  # noqa: F401

    transformers.LlamaForCausalLM  # noqa: B018  (trigger the lazy import of modeling_llama)
    return {"import_s": time.perf_counter() - t0, "peak_rss_kib": peak_rss_kib()}


def run_export(name: str) -> dict:
    """Child mode: build one model shape on the meta device and ``torch.export`` it, nothing else."""
    import torch
    import transformers

    from depgraph.tracer import export

    LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**ALL_SHAPES[name]))
    t0 = time.perf_counter()
    ep = export(model)
    return {"export_s": time.perf_counter() - t0, "peak_rss_kib": peak_rss_kib(), "num_fx_nodes": len(ep.graph.nodes)}


def run_one(name: str) -> dict:
    """Child mode: build, trace and group one model shape on the meta device."""
    t_import = time.perf_counter()
    import torch
    import transformers

    from depgraph import trace
    from depgraph.groups import find_groups

    # transformers imports model modules lazily; resolve them here so that the (multi-second)
    # import of modeling_llama is counted as import time, not build time.
    LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM
    import_s = time.perf_counter() - t_import
    rss_after_import = peak_rss_kib()

    c0, t0 = time.process_time(), time.perf_counter()
    config = LlamaConfig(**ALL_SHAPES[name])
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    t1 = time.perf_counter()
    tr = trace(model)
    t2 = time.perf_counter()
    groups = find_groups(tr)
    c3, t3 = time.process_time(), time.perf_counter()
    peak = peak_rss_kib()
    t4 = time.perf_counter()  # the same without replicating repeated layers: every layer exported and interpreted
    every = find_groups(trace(model, repeats=False))
    every_s = time.perf_counter() - t4
    assert [g.summary() for g in every] == [g.summary() for g in groups], "replicated layers changed the groups"

    return {
        "import_s": import_s,
        "build_s": t1 - t0,
        "trace_s": t2 - t1,
        "groups_s": t3 - t2,
        "total_s": t3 - t0,
        "total_cpu_s": c3 - c0,
        "peak_rss_kib": peak,
        "peak_rss_after_import_kib": rss_after_import,
        "layers": config.num_hidden_layers,
        "layers_traced": config.num_hidden_layers - len(tr.replicated),
        "every_layer_s": every_s,
        "num_nodes": tr.num_nodes,
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_groups": len(groups),
        "groups_by_kind": dict(sorted(Counter(g.kind for g in groups).items())),
    }


def inspect_processes(name: str, runs: int) -> dict:
    """``depprune inspect`` of one shape (a directory with its config.json only), ``runs`` fresh processes, timed start to exit."""
    script = shutil.which("depprune", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "pruners.cli"]
    with tempfile.TemporaryDirectory() as model:
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **ALL_SHAPES[name]}
        (Path(model) / "config.json").write_text(json.dumps(config))
        walls, groups = [], set()
        for _ in range(runs):
            t0 = time.perf_counter()
            proc = subprocess.run([*cmd, "inspect", "--model", model, "--json"], capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                return {"error": f"depprune inspect: exit code {proc.returncode}", "stderr": proc.stderr[-8000:]}
            groups.add(len(json.loads(proc.stdout)["groups"]))
    return {"inspect_process_s": statistics.median(walls), "inspect_process_runs": walls, "inspect_groups": sorted(groups)}


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


def summarize(runs: list[dict]) -> dict:
    """Median of every timing/RSS field over the successful runs; counts from the first run."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"], "stderr": runs[0].get("stderr", ""), "runs": runs}
    out = dict(ok[0])
    for key in ("import_s", "build_s", "trace_s", "groups_s", "total_s", "total_cpu_s", "peak_rss_kib",
                "peak_rss_after_import_kib", "process_wall_s", "loadavg_1min_before", "export_s", "export_rss_kib",
                "every_layer_s", "export_process_s"):
        if key in ok[0]:
            out[key] = statistics.median(r[key] for r in ok)
    inspected = [w for r in ok for w in r.get("inspect_process_runs", [])]
    failed = [r["inspect_error"] for r in ok if "inspect_error" in r]
    out.pop("inspect_process_runs", None)
    if failed:  # one failed inspect process fails the targets on it
        out.pop("inspect_process_s", None)
        out["inspect_error"] = failed[0]
    elif inspected:
        out["inspect_process_s"] = statistics.median(inspected)
        out["inspect_process_runs_all"] = inspected
    if "total_s" in ok[0]:
        out["total_s_min"] = min(r["total_s"] for r in ok)
        out["total_s_max"] = max(r["total_s"] for r in ok)
    out["n_runs"] = len(ok)
    out["n_failed"] = len(runs) - len(ok)
    out["runs"] = runs
    return out


def machine_info() -> dict:
    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "loadavg_at_start": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def evaluate(models: dict[str, dict]) -> list[dict]:
    out = []
    for model, metric, limit, desc in TARGETS:
        r = models.get(model)
        if r is None:
            continue
        if "error" in r:
            out.append({"model": model, "target": desc, "measured": None, "status": "FAIL (crashed)"})
            continue
        if r.get("n_failed"):
            out.append({"model": model, "target": desc, "measured": None,
                        "status": f"FAIL (crashed in {r['n_failed']} of {r['n_failed'] + r['n_runs']} runs)"})
            continue
        if metric in ("inspect_process_s", "process_ratio") and "inspect_process_s" not in r:
            status = f"FAIL ({r['inspect_error']})" if "inspect_error" in r else "not measured"
            out.append({"model": model, "target": desc, "measured": None, "status": status})
            continue
        value = {"total_s": r["total_s"], "peak_rss_gb": r["peak_rss_kib"] * 1024 / 1e9,
                 "export_ratio": r["total_s"] / r["export_s"] if r.get("export_s") else float("nan"),
                 "inspect_process_s": r.get("inspect_process_s"),
                 "process_ratio": r["inspect_process_s"] / r["export_process_s"]
                 if r.get("inspect_process_s") and r.get("export_process_s") else float("nan")}[metric]
        out.append(
            {"model": model, "target": desc, "measured": round(value, 2), "status": "PASS" if value <= limit else "FAIL"}
        )
    return out


def export_cells(r: dict) -> str:
    if not r.get("export_s"):
        return "- | -"
    return (f"{r['export_s']:.2f} | {r['total_s'] / r['export_s']:.2f} / "
            f"{r['peak_rss_kib'] / r['export_rss_kib']:.2f}")


def gb(kib: int) -> str:
    return f"{kib * 1024 / 1e9:.2f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Meta-device trace benchmark",
        "",
        f"Generated by `python benchmarks/trace_meta.py` on {m['date']}: {m['cpu_count']} CPUs ({m['processor']}), "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}; "
        f"1-min load average at start {m['loadavg_at_start'][0]:.2f}.",
        f"Each run is a fresh process; numbers are the median of {results['repeat']} runs per model "
        "(all runs are in trace_meta.json). Peak RSS is the process's `VmHWM` (GB = 10^9 bytes), "
        "so it includes the imports (see the baseline row). "
        "Total = build + trace + find_groups wall time, with repeated decoder layers traced once (two "
        "of the stack's layers exported, the others replicated: depgraph.repeats); *every layer* is "
        "trace(..., repeats=False) + find_groups on the same model in the same process, after the "
        "peak RSS was read. The import of torch/transformers/depgraph "
        "(including transformers' lazy import of `modeling_llama`) is shown separately and not counted. "
        "CPU s is process CPU time over the same span; a total much larger than CPU s means the "
        "machine was busy with other work.",
        "",
        "torch.export alone: the same shape built and exported in a process of its own, nothing else "
        "(depgraph.tracer.export); x export = total / export s, and peak RSS / that process's peak RSS.",
        "",
        "| model | params | layers traced | fx nodes | import s | build s | trace s | find_groups s | total s (min–max) "
        "| CPU s | peak RSS GB | every layer s | torch.export alone s | x export (time / RSS) | groups |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = results["baseline"]
    if "error" in base:
        lines.append("| *baseline (imports only)* | | | | | | | | | | crashed | | | | |")
    else:
        lines.append(f"| *baseline (imports only)* | | | | {base['import_s']:.2f} | | | | | "
                     f"| {gb(base['peak_rss_kib'])} | | | | |")
    for name, r in results["models"].items():
        if "error" in r:
            lines.append(f"| {name} | | | | | | | | | | | | | | crashed: {r['error']} |")
            continue
        kinds = ", ".join(f"{k} {v}" for k, v in r["groups_by_kind"].items())
        lines.append(
            f"| {name} | {r['num_params'] / 1e9:.2f} B | {r['layers_traced']} of {r['layers']} | {r['num_nodes']} "
            f"| {r['import_s']:.2f} | {r['build_s']:.2f} "
            f"| {r['trace_s']:.2f} | {r['groups_s']:.2f} | {r['total_s']:.2f} ({r['total_s_min']:.1f}–{r['total_s_max']:.1f}) "
            f"| {r['total_cpu_s']:.2f} | {gb(r['peak_rss_kib'])} | {r['every_layer_s']:.2f} | {export_cells(r)} "
            f"| {r['num_groups']}: {kinds} |"
        )
    whole = {n: r for n, r in results["models"].items() if "inspect_process_s" in r or "inspect_error" in r}
    if whole:
        base_s = base.get("process_wall_s")
        lines += ["", "## The whole command, as a user meets it", "",
                  "Fresh processes timed from start to exit (Python's start, imports, the work, the teardown): "
                  "`depprune inspect --model DIR --json` of a directory holding only the shape's config.json, "
                  f"median of {results.get('process_runs', 1)} per run (every one is in trace_meta.json); "
                  "a process that only imports torch, transformers (with `modeling_llama`) and depgraph; and "
                  "one that only builds the shape on meta and exports it (the torch.export alone column above, "
                  "as a whole process). The `depprune` script tunes the garbage collector for its own process "
                  "(pruners.cli.entry: the oldest generation collected less often, frozen before the teardown); "
                  "the other two run with Python's defaults.", "",
                  "| model | `depprune inspect` process s (runs) | imports-only process s | export-only process s "
                  "| inspect / export-only |",
                  "|---|---:|---:|---:|---:|"]
        for n, r in whole.items():
            if "inspect_error" in r:
                lines.append(f"| {n} | failed: {r['inspect_error']} | | | |")
                continue
            runs = ", ".join(f"{w:.2f}" for w in r["inspect_process_runs_all"])
            inspect_s, exp = r["inspect_process_s"], r.get("export_process_s")
            lines.append(f"| {n} | {inspect_s:.2f} ({runs}) | {'-' if base_s is None else f'{base_s:.2f}'} "
                         f"| {'-' if exp is None else f'{exp:.2f}'} | {'-' if exp is None else f'{inspect_s / exp:.2f}'} |")
    growth = {n: r for n, r in results["models"].items() if n in GROWTH and "error" not in r}
    if len(growth) > 1:
        layers = {n: GROWTH[n]["num_hidden_layers"] for n in growth}
        lines += ["", "## Growth with the number of layers (llama-2-7b width)", "",
                  "Per layer: (seconds) / layers, which stays flat when the cost is linear in the layers. With "
                  "repeated layers traced once the export no longer grows with the layers; what grows is "
                  "replicating the layouts and find_groups, both linear. Plot: trace_meta_growth.png.", "",
                  "| layers | trace + groups s | per layer s | every layer s | per layer s | torch.export alone s "
                  "| x export |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for n in sorted(growth, key=layers.get):
            r = growth[n]
            ratio = f"{r['total_s'] / r['export_s']:.2f}" if r.get("export_s") else "-"
            lines.append(f"| {layers[n]} | {r['total_s']:.2f} | {r['total_s'] / layers[n]:.3f} | "
                         f"{r['every_layer_s']:.2f} | {r['every_layer_s'] / layers[n]:.3f} | "
                         f"{r.get('export_s', float('nan')):.2f} | {ratio} |")
    lines += ["", "## Targets (judged on the median)", "", "| model | target | measured | result |",
              "|---|---|---:|---|"]
    for t in results["targets"]:
        measured = "—" if t["measured"] is None else t["measured"]
        lines.append(f"| {t['model']} | {t['target']} | {measured} | **{t['status']}** |")
    return "\n".join(lines) + "\n"


def plot_growth(results: dict, path: Path) -> None:
    """Seconds vs layers at llama-2-7b width: trace + groups (replicated and every layer) and torch.export alone."""
    growth = {GROWTH[n]["num_hidden_layers"]: r for n, r in results["models"].items() if n in GROWTH and "error" not in r}
    if len(growth) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(growth)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [growth[x]["total_s"] for x in xs], "o-", label="trace + groups (repeated layers traced once)")
    ax.plot(xs, [growth[x]["every_layer_s"] for x in xs], "s--", label="trace + groups, every layer")
    ax.plot(xs, [growth[x].get("export_s", float("nan")) for x in xs], "^:", label="torch.export alone")
    ax.set_xlabel("decoder layers (llama-2-7b width, meta device)")
    ax.set_ylabel("seconds")
    ax.set_xticks(xs)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ALL_SHAPES), choices=list(ALL_SHAPES), metavar="NAME",
                        help=f"model shapes to run (default: all of {', '.join(ALL_SHAPES)})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process runs per model; the median is reported")
    parser.add_argument("--process-runs", type=int, default=3,
                        help="`depprune inspect` processes per full-size shape and repeat (default 3; median reported)")
    parser.add_argument("--one", choices=list(ALL_SHAPES), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--export-only", choices=list(ALL_SHAPES), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)

    if args.one or args.baseline or args.export_only:
        result = run_one(args.one) if args.one else run_export(args.export_only) if args.export_only else run_baseline()
        print(json.dumps(result))
        return 0

    print("baseline (imports only) ...", flush=True)
    results: dict = {"machine": machine_info(), "repeat": args.repeat, "process_runs": args.process_runs,
                     "baseline": summarize([child(["--baseline"]) for _ in range(args.repeat)]), "models": {}}
    for name in args.models:
        runs = []
        for i in range(args.repeat):
            print(f"{name} run {i + 1}/{args.repeat} ...", flush=True)
            r = child(["--one", name])
            e = child(["--export-only", name])  # the same shape, torch.export alone, in its own process
            if "error" not in r and "error" not in e:
                r.update(export_s=e["export_s"], export_rss_kib=e["peak_rss_kib"], export_process_s=e["process_wall_s"])
            if name in SHAPES and "error" not in r:  # the whole command as a user runs it
                p = inspect_processes(name, args.process_runs)
                if "error" in p:
                    r["inspect_error"] = p["error"]
                    print(f"  depprune inspect failed ({p['error']}):\n{p['stderr']}", flush=True)
                else:
                    assert p["inspect_groups"] == [r["num_groups"]], "depprune inspect found other groups"
                    r.update(p)
                    print(f"  depprune inspect process {p['inspect_process_s']:.2f} s (median of {args.process_runs}); "
                          f"export-only process {r.get('export_process_s', float('nan')):.2f} s", flush=True)
            runs.append(r)
            if "error" in r:
                print(f"  crashed ({r['error']}):\n{r['stderr']}", flush=True)
            else:
                print(f"  trace {r['trace_s']:.2f} s, find_groups {r['groups_s']:.2f} s, total {r['total_s']:.2f} s "
                      f"(CPU {r['total_cpu_s']:.2f} s), peak RSS {gb(r['peak_rss_kib'])} GB; "
                      f"torch.export alone {r.get('export_s', float('nan')):.2f} s", flush=True)
        results["models"][name] = summarize(runs)
    results["targets"] = evaluate(results["models"])

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trace_meta.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "trace_meta.md").write_text(markdown(results))
    plot_growth(results, args.out / "trace_meta_growth.png")
    print(markdown(results))
    return 0 if all(t["status"] == "PASS" for t in results["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
