"""Side by side with Torch-Pruning: the same models, calibration samples and parameter targets.

For each model and each target (a fraction of the parameters removed), both tools prune:

- **Torch-Pruning 1.6.1**, set up as its LLM example (``benchmarks/torch_pruning_worker.py``,
  run by its own venv ``.venv-tp`` with transformers 4.49, built here on first use): L2 group
  magnitude and group Taylor, hidden + MLP channels (its attention-head grouping does not finish
  on these models: one row says so), ``pruning_ratio`` searched for the size closest to the target;
- **depprune**, through its public API: ``l2`` and ``taylor-element`` on the same units (hidden +
  MLP channels, uniform), and two of its own best settings -- ``wanda-sp`` on KV groups + MLP
  channels, and ``taylor-element`` on hidden + MLP channels ranked globally in two rounds.

Every row records the achieved parameter count, the wall time and peak RSS of the pruning call
alone (model loaded before; Taylor's forward/backward on the calibration samples included), and
whether the written directory reloads with ``AutoModelForCausalLM.from_pretrained`` under
depprune's transformers (plainly, or only with ``trust_remote_code``) and gives the logits the
pruned model gave.  Perplexity is measured by ``depprune eval`` on the saved directories
(TinyStories-valid and the first 32,768 tokens of WikiText-2, windows of 512 tokens); on
stories260K the same rows are measured again after ``--recover-steps`` steps of LoRA recovery
(``recovery.recover``, the same budget for both tools' outputs, evaluated with the same
perplexity function).  Tiny random models of more architectures give "does it run" rows.  A
failure of either tool is a row, never a crash of the benchmark.

    python benchmarks/compare_torch_pruning.py            # every row (about 11 minutes on 2 cores)
    python benchmarks/compare_torch_pruning.py --models stories260K --targets 0.35 0.66
    python benchmarks/compare_torch_pruning.py --report   # compare_torch_pruning.md and .png from the JSON
    python benchmarks/compare_torch_pruning.py --fresh    # measure again every row already in the JSON

Results go to ``benchmarks/results/compare_torch_pruning.json`` as each model finishes (rows
already there are skipped: an interrupted run resumes); ``--report`` rewrites the markdown and plot.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import venv
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from recover_methods import RESULTS, ROOT, SHARED, TOKENIZER, TRAIN, VALID, WIKI
from torch_pruning_worker import peak_rss, reset_peak  # the peer's worker measures memory the same way

VENV = ROOT / ".venv-tp"
PEER_PINS = ("torch==2.13.0", "transformers==4.49.0", "torch-pruning==1.6.1")
WORKER = Path(__file__).with_name("torch_pruning_worker.py")
MODELS = {name: SHARED / "models" / name for name in
          ("stories260K", "stories260K-mistral", "stories260K-qwen2", "stories260K-phi3")}
TARGETS = (0.2, 0.35, 0.5, 0.66)
CALIBRATION = {"samples": 64, "seq_len": 128, "seed": 0}
EVAL = {"seq_len": 512, "max_tokens": 32_768}
RECOVERY_WORKERS = 2  # recoveries run side by side (nothing in them is timed against the peer)
TIMEOUT = 60  # seconds for one Torch-Pruning job that may never finish (its head grouping)
HIDDEN_MLP = ["hidden_channel", "mlp_channel"]

# tool, label, settings: Torch-Pruning's (importance, units) or depprune's PruneConfig fields
CONFIGS = {
    "tp-l2": ("Torch-Pruning", "magnitude L2, hidden+MLP", {"importance": "l2", "units": "hidden_mlp"}),
    "tp-taylor": ("Torch-Pruning", "Taylor, hidden+MLP", {"importance": "taylor", "units": "hidden_mlp"}),
    "dp-l2": ("depprune", "magnitude L2, hidden+MLP", {"importance": "l2", "kinds": HIDDEN_MLP}),
    "dp-taylor": ("depprune", "Taylor (taylor-element), hidden+MLP", {"importance": "taylor-element", "kinds": HIDDEN_MLP}),
    "dp-wanda-sp": ("depprune", "wanda-sp, KV groups+MLP", {"importance": "wanda-sp"}),
    "dp-taylor-global-2r": ("depprune", "taylor-element, hidden+MLP, global, 2 rounds",
                            {"importance": "taylor-element", "kinds": HIDDEN_MLP, "strategy": "global", "rounds": 2}),
}
# one-off rows on stories260K at 35%: what Torch-Pruning's example settings do as they are
EXTRA_TP = {
    "tp-l2-round4": ("Torch-Pruning", "magnitude L2, hidden+MLP, round_to=4",
                     {"importance": "l2", "units": "hidden_mlp", "round_to": 4}),
    "tp-l2-heads": ("Torch-Pruning", "magnitude L2, heads+hidden+MLP", {"importance": "l2", "units": "heads_hidden_mlp"}),
}
# tiny random models: "does it run at all" (35% of parameters, L2, hidden + MLP channels)
_TINY = {"vocab_size": 97, "num_hidden_layers": 2, "max_position_embeddings": 64, "bos_token_id": 1, "eos_token_id": 2,
         "pad_token_id": 0}
_LLAMA_LIKE = {**_TINY, "hidden_size": 48, "intermediate_size": 80, "num_attention_heads": 6}
ZOO = {
    "llama": {"model_type": "llama", **_LLAMA_LIKE, "num_key_value_heads": 3, "head_dim": 8},
    "mistral": {"model_type": "mistral", **_LLAMA_LIKE, "num_key_value_heads": 2, "head_dim": 8},
    "qwen2": {"model_type": "qwen2", **_LLAMA_LIKE, "num_key_value_heads": 3},
    "phi3": {"model_type": "phi3", **_LLAMA_LIKE, "num_key_value_heads": 2},
    "gemma": {"model_type": "gemma", **_LLAMA_LIKE, "num_key_value_heads": 3, "head_dim": 10},
    "gpt2": {"model_type": "gpt2", **{k: v for k, v in _TINY.items() if k not in ("num_hidden_layers", "max_position_embeddings")},
             "n_embd": 48, "n_layer": 2, "n_head": 6, "n_inner": 80, "n_positions": 64},
    "gpt_neox": {"model_type": "gpt_neox", **_LLAMA_LIKE, "rotary_pct": 0.5},
    "opt": {"model_type": "opt", **{k: v for k, v in _TINY.items()}, "hidden_size": 48, "num_attention_heads": 6,
            "ffn_dim": 80, "word_embed_proj_dim": 48},
}
ZOO_TARGET = 0.35


# -- the peer's venv -----------------------------------------------------------------------------

def peer_python() -> Path:
    """``.venv-tp``'s python, the venv built (torch from the local CPU wheel) when it is missing."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"building {VENV} ({', '.join(PEER_PINS)})", flush=True)
        venv.create(VENV, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    return python


def peer_versions(python: Path) -> dict:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('torch', 'transformers', 'torch-pruning')}))")
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)


def run_peer(python: Path, jobs: list[dict], timeout: float | None, threads: int = 1) -> dict[str, dict]:
    """Run the worker on ``jobs``; a job it did not answer for (a crash, a time-out) gets an error row.

    Past ``timeout`` the worker prints its stack and exits: the row names the innermost
    Torch-Pruning functions it was in.
    """
    if not jobs:
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(jobs, f)
    try:
        deadline = [] if timeout is None else [str(timeout)]
        done = subprocess.run([str(python), str(WORKER), f.name, *deadline], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    finally:
        Path(f.name).unlink()
    stdout, stderr = done.stdout, done.stderr
    why = f"did not finish within {timeout:.0f} s" if "Timeout (" in stderr else f"exit code {done.returncode}"
    out = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[row.pop("key")] = row
    for job in jobs:
        if job["key"] not in out:
            frames = [ln.rsplit(" in ", 1)[-1] for ln in stderr.splitlines() if "torch_pruning" in ln and "File" in ln]
            where = "in " + " < ".join(frames[:4]) if frames else stderr.strip()[-300:]
            out[job["key"]] = {"ok": False, "error": why, "where": where}
    return out


# -- depprune's side -----------------------------------------------------------------------------

def depprune_prune(source: Path, target: float, settings: dict, samples, out: Path) -> dict:
    """Prune with depprune's public API, save the model and the probe logits; the row's measurements."""
    import torch

    from pruners import DeppruneError, PruneConfig, count_params, load_model, prune, save_pruned

    model = load_model(source)
    config = PruneConfig(ratio=target, seed=CALIBRATION["seed"], **settings)
    uses_samples = config.importance != "l2"
    try:
        reset_peak()
        start = time.perf_counter()
        result = prune(model, config, samples=samples if uses_samples else None, progress=False)
        seconds = time.perf_counter() - start
        peak = peak_rss()
        save_pruned(result.model, out, result.record, source=source, force=True)
    except DeppruneError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    with torch.no_grad():
        torch.save(result.model(samples[0]).logits, f"{out}.probe.pt")  # (1, T, vocab)
    return {"ok": True, "params": count_params(result.model), "prune_seconds": seconds, "peak_rss_gb": peak}


def reload_check(out: Path) -> dict:
    """How ``AutoModelForCausalLM.from_pretrained`` opens ``out``, and whether it gives the pruned model's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    probe = torch.load(f"{out}.probe.pt")
    samples = torch.load(out.parent / "calibration.pt")
    for how, trust in (("plain", False), ("trust_remote_code", True)):
        try:
            model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=trust, dtype=torch.float32).eval()
        except Exception as e:  # noqa: BLE001 -- the reason is the row's content
            error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            continue
        with torch.no_grad():
            diff = (model(samples[:1]).logits - probe).abs().max().item()
        return {"reloads": how if diff <= 1e-4 else f"{how}, logits differ by {diff:.2g}", "reload_diff": diff}
    return {"reloads": "no", "reload_error": error}


def evaluate_dirs(dirs: list[Path]) -> dict[str, dict]:
    """``depprune eval`` on the saved directories, in one process."""
    if not dirs:
        return {}
    cmd = [sys.executable, "-m", "pruners.cli", "eval", "--model", *map(str, dirs), "--tokenizer", str(TOKENIZER),
           "--ppl", str(VALID), str(WIKI), "--seq-len", str(EVAL["seq_len"]), "--max-tokens", str(EVAL["max_tokens"]),
           "--trust-remote-code", "--json", "--quiet"]
    report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["models"]
    return {Path(k).name: {"ppl_tinystories": v[f"ppl:{VALID.name}@{EVAL['seq_len']}"],
                           "ppl_wikitext2": v[f"ppl:{WIKI.name}@{EVAL['seq_len']}"]} for k, v in report.items()}


def recover_and_evaluate(out: Path, steps: int) -> dict:
    """LoRA recovery of a saved model (either tool's) for ``steps`` steps; perplexity as ``depprune eval`` measures it."""
    from pruners import load_model, load_tokenizer, perplexity
    from recovery import RecoverConfig, recover

    tok = load_tokenizer(TOKENIZER)
    model = load_model(out, trust_remote_code=True)
    config = RecoverConfig.model_validate({
        "method": "lora", "data": {"source": str(TRAIN["tinystories"]), "seq_len": 128},
        "train": {"max_steps": steps, "lr": 5e-3, "batch_size": 8, "seed": 0, "eval_every": steps},
    })
    start = time.perf_counter()
    model = recover(model, tok, config, progress=False, inplace=True).model
    return {"recover_seconds": time.perf_counter() - start,
            "ppl_tinystories": perplexity(model, tok, VALID, seq_len=EVAL["seq_len"], progress=False),
            "ppl_wikitext2": perplexity(model, tok, WIKI, seq_len=EVAL["seq_len"], max_tokens=EVAL["max_tokens"],
                                        progress=False)}


def tool_of(key: str) -> str:
    return (CONFIGS.get(key) or EXTRA_TP[key])[0]


def settings_of(key: str) -> dict:
    return (CONFIGS.get(key) or EXTRA_TP[key])[2]


# -- one model ------------------------------------------------------------------------------------

def model_rows(name: str, source: Path, runs: list[tuple[float, str]], work: Path, python: Path, zoo: bool,
               recover_steps: int) -> list[dict]:
    """Every ``(target, config key)`` of ``runs`` on one model: pruned by its tool, reloaded, evaluated, recovered."""
    import torch

    from pruners import CalibrationConfig, calibration_samples, count_params, load_model, load_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    dense = count_params(load_model(source))
    if zoo:  # random token ids: nothing is evaluated
        gen = torch.Generator().manual_seed(CALIBRATION["seed"])
        samples = [torch.randint(0, ZOO[name]["vocab_size"], (1, 32), generator=gen) for _ in range(8)]
    else:
        cal = CalibrationConfig(source=TRAIN["tinystories"], samples=CALIBRATION["samples"], seq_len=CALIBRATION["seq_len"])
        samples = calibration_samples(cal, load_tokenizer(TOKENIZER), CALIBRATION["seed"])
    torch.save(torch.cat(samples), work / "calibration.pt")  # (N, T): the same samples for both tools
    rows = [{"model": name, "config": "dense", "target": 0.0, "ok": True, "params": dense, "dir": str(source)}]
    for target, key in runs:
        rows.append({"model": name, "config": key, "target": target, "target_params": round((1 - target) * dense),
                     "dir": str(work / f"{key}-{target}")})
    peer = [r for r in rows[1:] if tool_of(r["config"]) == "Torch-Pruning"]
    jobs = {r["dir"]: {"key": r["dir"], "model": str(source), "out": r["dir"], "calibration": str(work / "calibration.pt"),
                       "target_params": r["target_params"], "seed": 0, **settings_of(r["config"])} for r in peer}
    print(f"{name}: Torch-Pruning, {len(jobs)} jobs", flush=True)
    answers = run_peer(python, [j for j in jobs.values() if j["units"] == "hidden_mlp"], TIMEOUT if zoo else None)
    for job in jobs.values():
        if job["units"] != "hidden_mlp":  # may never finish
            answers.update(run_peer(python, [job], TIMEOUT))
    sizes = {}  # target -> the size Torch-Pruning reached there (its example settings), which depprune then aims at
    for row in peer:
        row.update(answers[row["dir"]])
        if row["ok"] and row["config"] == "tp-l2" and not zoo:
            sizes[row["target"]] = row["params"]
    for row in rows[1:]:
        if tool_of(row["config"]) == "depprune":
            row["target_params"] = sizes.get(row["target"], row["target_params"])
            print(f"{name} {row['target']:.0%} {row['config']}: {row['target_params']:,} parameters", flush=True)
            row.update(depprune_prune(source, 1 - row["target_params"] / dense, settings_of(row["config"]), samples,
                                      Path(row["dir"])))
    for row in rows[1:]:
        if row["ok"]:
            row.update(reload_check(Path(row["dir"])))
    if not zoo:
        loadable = [Path(r["dir"]) for r in rows[1:] if r["ok"] and r["reloads"] != "no"]
        scores = evaluate_dirs([source, *loadable])
        for row in rows:
            row.update(scores.get(Path(row["dir"]).name, {}))
        if recover_steps:
            todo = [r for r in rows[1:] if r["ok"] and r["reloads"] != "no" and r["config"] in CONFIGS]
            print(f"{name}: recovery of {len(todo)} models, {RECOVERY_WORKERS} at a time", flush=True)
            spawn = multiprocessing.get_context("spawn")  # untimed work: one process per core, one thread each
            with ProcessPoolExecutor(RECOVERY_WORKERS, mp_context=spawn, initializer=torch.set_num_threads,
                                     initargs=(1,)) as pool:
                done = pool.map(recover_and_evaluate, [Path(r["dir"]) for r in todo], [recover_steps] * len(todo))
                for row, rec in zip(todo, done):
                    row["recovered"] = {"steps": recover_steps, **rec}
    for row in rows:
        del row["dir"]  # a temporary directory
    return rows


def tiny_model(name: str, directory: Path) -> Path:
    """A random model of ``ZOO[name]``'s config, saved (seed 0) so that both tools prune the same weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(ZOO[name])
    AutoConfig.for_model(spec.pop("model_type"), **spec).save_pretrained(directory)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory)).save_pretrained(directory)
    return directory


# -- the report -----------------------------------------------------------------------------------

def label(key: str) -> str:
    return f"{tool_of(key)}: {(CONFIGS.get(key) or EXTRA_TP[key])[1]}"


def cell(text: str) -> str:
    """One markdown table cell: the first line, pipes escaped."""
    return str(text).splitlines()[0][:240].replace("|", "\\|") if text else ""


def fmt(x, spec=".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(rows: list[dict], model: str) -> list[str]:
    dense = next(r for r in rows if r["model"] == model and r["config"] == "dense")
    lines = [f"### {model} (dense: {dense['params']:,} parameters, TinyStories {fmt(dense.get('ppl_tinystories'), '.2f')}, "
             f"WikiText-2 {fmt(dense.get('ppl_wikitext2'))})", "",
             "| target (aimed at) | tool: setting | params | TinyStories PPL | WikiText-2 PPL | after recovery: "
             "TinyStories / WikiText-2 | prune s | peak RSS GB | reloads |", "|---|---|---|---|---|---|---|---|---|"]
    order = list(CONFIGS) + list(EXTRA_TP)
    for r in sorted((r for r in rows if r["model"] == model and r["config"] != "dense"),
                    key=lambda r: (r["target"], order.index(r["config"]))):
        head = f"| {r['target']:.0%} ({r['target_params']:,}) | {label(r['config'])} |"
        if not r["ok"]:
            lines.append(f"{head} failed: {cell(r['error'])} ({cell(r.get('where'))}) | | | | | | |")
            continue
        rec = r.get("recovered")
        rec_txt = f"{rec['ppl_tinystories']:.2f} / {rec['ppl_wikitext2']:.1f}" if rec else "-"
        lines.append(f"{head} {r['params']:,} | {fmt(r.get('ppl_tinystories'), '.2f')} | {fmt(r.get('ppl_wikitext2'))} | "
                     f"{rec_txt} | {r['prune_seconds']:.2f} | {r['peak_rss_gb']:.2f} | {r['reloads']} |")
    return lines


def zoo_table(rows: list[dict]) -> list[str]:
    lines = ["| architecture | tool | params (target) | removed | prune s | reloads | error |", "|---|---|---|---|---|---|---|"]
    dense = {r["model"]: r["params"] for r in rows if r["config"] == "dense"}
    for r in rows:
        if r["config"] == "dense":
            continue
        tool = CONFIGS[r["config"]][0]
        if r["ok"]:
            lines.append(f"| {r['model']} | {tool} | {r['params']:,} ({r['target_params']:,}) | "
                         f"{1 - r['params'] / dense[r['model']]:.1%} | {r['prune_seconds']:.2f} | "
                         f"{r['reloads']} | {cell(r.get('reload_error'))} |")
        else:
            lines.append(f"| {r['model']} | {tool} | - ({r['target_params']:,}) | - | - | - | {cell(r['error'])} {cell(r.get('where'))} |")
    return lines


def write_plot(rows: list[dict], path: Path, model: str = "stories260K") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"tp-l2": ("tab:red", "s", "--"), "tp-taylor": ("tab:red", "o", "-"), "dp-l2": ("tab:blue", "s", "--"),
              "dp-taylor": ("tab:blue", "o", "-"), "dp-wanda-sp": ("tab:green", "^", "-"),
              "dp-taylor-global-2r": ("tab:purple", "D", "-")}
    for ax, recovered in zip(axes, (False, True)):
        for key, (color, marker, line) in styles.items():
            pts = sorted((r["params"], (r["recovered"] if recovered else r).get("ppl_tinystories"))
                         for r in rows if r["model"] == model and r["config"] == key and r["ok"]
                         and (r.get("recovered") if recovered else r.get("ppl_tinystories")))
            if pts:
                ax.plot(*zip(*pts), color=color, marker=marker, linestyle=line, label=label(key))
        dense = next(r for r in rows if r["model"] == model and r["config"] == "dense")
        ax.axhline(dense["ppl_tinystories"], color="gray", linewidth=0.8, label="dense")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("parameters")
        ax.set_ylabel("TinyStories-valid perplexity")
        steps = next((r["recovered"]["steps"] for r in rows if r.get("recovered")), 0)
        ax.set_title(f"{model}, " + (f"after {steps} LoRA steps" if recovered else "no recovery"))
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(data: dict) -> None:
    rows = data["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows if r["model"] in MODELS))
    lines = ["# depprune and Torch-Pruning, side by side", "",
             f"Generated by `python benchmarks/compare_torch_pruning.py` ({data['machine']}); "
             f"Torch-Pruning {data['peer']['torch-pruning']} with transformers {data['peer']['transformers']} in its own "
             f"venv, depprune with transformers {data['depprune']['transformers']}; torch {data['depprune']['torch']} "
             "(CPU) for both.  Every row is in [compare_torch_pruning.json](compare_torch_pruning.json); the plot: "
             "[compare_torch_pruning.png](compare_torch_pruning.png).", "",
             f"- Calibration: the same {CALIBRATION['samples']} windows of {CALIBRATION['seq_len']} tokens of "
             f"TinyStories-train (seed {CALIBRATION['seed']}) for every estimator that reads data, both tools.",
             f"- Perplexity: `depprune eval --seq-len {EVAL['seq_len']} --max-tokens {EVAL['max_tokens']}` on the saved "
             "directories (TinyStories-valid: 46 stories; WikiText-2: the first 32,768 tokens of the test set).",
             "- prune s / peak RSS: the pruning call alone, the model already loaded (Taylor's backward passes "
             "included; Torch-Pruning's search for the ratio that hits the size is not). Peak RSS is the process's "
             "VmHWM, reset before the call, so it includes the imported libraries.",
             "- reloads: `AutoModelForCausalLM.from_pretrained` under depprune's transformers opens the directory "
             "(plainly, or only with `trust_remote_code`) and gives the pruned model's logits within 1e-4.", ""]
    for model in models:
        lines += table(rows, model) + [""]
    zoo = [r for r in rows if r["model"] in ZOO]
    if zoo:
        lines += ["### Tiny random models: does it run?", "",
                  f"{ZOO_TARGET:.0%} of the parameters, L2 magnitude, hidden + MLP channels, random weights.", ""]
        lines += zoo_table(zoo) + [""]
    path = RESULTS / "compare_torch_pruning.md"
    text = path.read_text() if path.exists() else ""
    notes = text.partition("<!-- notes -->")[2]
    path.write_text("\n".join(lines) + "\n<!-- notes -->" + (notes or "\n"))
    write_plot(rows, RESULTS / "compare_torch_pruning.png")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    ap.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    ap.add_argument("--zoo", nargs="*", default=list(ZOO), choices=sorted(ZOO), help="tiny random architectures")
    ap.add_argument("--recover-steps", type=int, default=100, help="LoRA steps after pruning, on stories260K (0: none)")
    ap.add_argument("--report", action="store_true", help="only rewrite the markdown and plot from the JSON")
    ap.add_argument("--fresh", action="store_true", help="measure every row again (default: keep the rows already there)")
    args = ap.parse_args()
    path = RESULTS / "compare_torch_pruning.json"
    if args.report:
        report(json.loads(path.read_text()))
        return
    import torch
    import transformers

    torch.set_num_threads(1)
    python = peer_python()
    data = json.loads(path.read_text()) if path.exists() else {"rows": []}
    data.update(machine=f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {torch.get_num_threads()} thread",
                peer=peer_versions(python), depprune={"torch": torch.__version__, "transformers": transformers.__version__})
    if args.fresh:
        data["rows"] = []
    have = {(r["model"], r["config"], r["target"]) for r in data["rows"]}
    with tempfile.TemporaryDirectory() as tmp:
        todo = [(m, MODELS[m], False) for m in args.models] + [(z, None, True) for z in args.zoo]
        for name, source, zoo in todo:
            targets = [ZOO_TARGET] if zoo else args.targets
            same_units = ("tp-l2", "tp-taylor", "dp-l2", "dp-taylor")  # on the re-expressions of stories260K
            keep = ("tp-l2", "dp-l2") if zoo else CONFIGS if name == "stories260K" else same_units
            configs = {k: v for k, v in CONFIGS.items() if k in keep}
            if name == "stories260K" and 0.35 in targets:
                configs = {**configs, **EXTRA_TP}
            runs = [(t, k) for t in targets for k in configs if (k not in EXTRA_TP or t == 0.35)]
            if all((name, k, t) in have for t, k in runs):
                continue
            work = Path(tmp) / name
            if zoo:
                source = tiny_model(name, work / "source")
            rows = model_rows(name, source, runs, work, python, zoo, args.recover_steps if name == "stories260K" else 0)
            data["rows"] = [r for r in data["rows"] if r["model"] != name] + rows
            path.write_text(json.dumps(data, indent=1) + "\n")
    report(data)


if __name__ == "__main__":
    main()
