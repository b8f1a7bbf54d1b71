"""Recovery after pruning: dense / pruned / +lora / +kd / +full, on in-domain and out-of-domain data.

For each model (stories260K and its -qwen2 and -phi3 re-expressions: the same weights), each
ratio of parameters removed (wanda-sp, the best estimator of the ablation) and each seed, the
pruned model is fine-tuned with every recovery method on TinyStories training text (in domain)
and, separately, on the 2,000 Alpaca records (out of domain).  Every run reports
TinyStories-valid and WikiText-2 perplexity, a greedy sample, training time and peak memory
(each run in its own process, so ``ru_maxrss`` is the run's).

Runs are appended to ``benchmarks/results/recovery.json`` as they finish (an interrupted
benchmark resumes where it stopped); ``--report`` writes ``recovery.md`` and ``recovery_ppl.png``
from it.  Two runs go at once (``--jobs``), one thread each.

    python benchmarks/recover_methods.py --steps 600 --seeds 0 1 2
    python benchmarks/recover_methods.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import time
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = {name: SHARED / "models" / name for name in ("stories260K", "stories260K-qwen2", "stories260K-phi3")}
TOKENIZER = SHARED / "models" / "stories260K"
TRAIN = {"tinystories": SHARED / "data" / "tinystories-train" / "tinystories-train.cased.txt",
         "alpaca": SHARED / "data" / "alpaca" / "alpaca_small_2000.json"}
VALID = SHARED / "data" / "tinystories-valid" / "TinyStories-valid.first46.txt"
WIKI = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "Once upon a time"


def evaluate(model, tok) -> dict:
    from pruners import perplexity

    ids = tok(PROMPT, return_tensors="pt").input_ids
    sample = tok.decode(model.generate(ids, max_new_tokens=60, do_sample=False)[0], skip_special_tokens=True)
    words = sample.split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return {
        "ppl_tinystories": perplexity(model, tok, VALID, progress=False),
        "ppl_wikitext2": perplexity(model, tok, WIKI, seq_len=128, max_tokens=65_536, progress=False),
        "sample": sample,
        "repeated_4grams": len(grams) - len(set(grams)),  # > 0: a loop
    }


def one_run(job: dict, queue) -> None:
    """Prune (seeded) and, for a method, recover; the result dict goes to ``queue``."""
    import torch

    torch.set_num_threads(1)
    from pruners import CalibrationConfig, PruneConfig, calibration_samples, load_model, load_tokenizer, prune
    from recovery import RecoverConfig, recover

    tok = load_tokenizer(TOKENIZER)
    dense = load_model(MODELS[job["model"]])
    out = dict(job)
    if job["stage"] == "dense":
        out.update(evaluate(dense, tok))
    else:
        cfg = PruneConfig(ratio=job["ratio"], importance="wanda-sp", seed=job["seed"],
                          calibration=CalibrationConfig(source=TRAIN["tinystories"], samples=64, seq_len=128))
        pruned = prune(dense, cfg, samples=calibration_samples(cfg.calibration, tok, job["seed"]), progress=False).model
        if job["stage"] != "pruned":
            rc = RecoverConfig.model_validate({
                "method": job["stage"], "data": {"source": str(TRAIN[job["data"]]), "seq_len": 256},
                # kd on all weights, mostly KL at T=1: the best of the first trials (weight 0.5 / T=2 not yet compared)
                "distill": {"weights": "full", "weight": 0.9, "temperature": 1.0} if job["stage"] == "kd" else {},
                "train": {"max_steps": job["steps"], "lr": job["lr"], "seed": job["seed"], "eval_every": 100},
            })
            start = time.perf_counter()
            result = recover(pruned, tok, rc, teacher=dense if job["stage"] == "kd" else None, progress=False,
                             inplace=True)
            out["train_seconds"] = time.perf_counter() - start
            out["validation_loss"] = result.summary()["validation_loss"]
            pruned = result.model
        out["params"] = sum(p.numel() for p in pruned.parameters())
        out.update(evaluate(pruned, tok))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(out)


def key(job: dict) -> str:
    return "|".join(str(job.get(k)) for k in ("model", "ratio", "stage", "data", "seed", "steps"))


def jobs(args) -> list[dict]:
    out = []
    for model in args.models:
        out.append({"model": model, "stage": "dense", "ratio": 0.0, "data": None, "seed": 0, "steps": 0})
        for ratio in args.ratios:
            for seed in args.seeds:
                out.append({"model": model, "stage": "pruned", "ratio": ratio, "data": None, "seed": seed, "steps": 0})
                for data in args.data:
                    for method in args.methods:
                        out.append({"model": model, "stage": method, "ratio": ratio, "data": data, "seed": seed,
                                    "steps": args.steps, "lr": args.lr[method]})
    return out


def run_all(args) -> None:
    path = RESULTS / "recovery.json"
    done = json.loads(path.read_text()) if path.exists() else []
    have = {key(r) for r in done}
    todo = [j for j in jobs(args) if key(j) not in have]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    running: dict = {}  # job key -> its process
    while todo or running:
        while todo and len(running) < args.jobs:
            job = todo.pop(0)
            running[key(job)] = ctx.Process(target=one_run, args=(job, queue))
            running[key(job)].start()
        result = None
        while result is None:  # a run that crashed puts nothing: stop, naming it, instead of waiting forever
            try:
                result = queue.get(timeout=5)
            except Empty:
                failed = [k for k, p in running.items() if p.exitcode not in (None, 0)]
                if failed:
                    raise SystemExit(f"run {failed[0]} failed (exit code {running[failed[0]].exitcode})") from None
        running.pop(key(result)).join()
        done.append(result)
        path.write_text(json.dumps(done, indent=1) + "\n")
        print(f"{key(result)}: TinyStories PPL {result['ppl_tinystories']:.3f}", flush=True)


def report() -> None:
    rows = json.loads((RESULTS / "recovery.json").read_text())
    lines = ["# Recovery after pruning (benchmarks/recover_methods.py)", "",
             "| model | ratio | stage | data | seeds | TinyStories PPL | WikiText-2 PPL | train s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["ratio"], r["stage"], r["data"]), []).append(r)
    for (model, ratio, stage, data), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        def stat(k, rs=rs):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if not vals:
                return "-"
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            return f"{mean:.3f} ± {sd:.3f}" if len(vals) > 1 else f"{mean:.3f}"
        lines.append(f"| {model} | {ratio:.0%} | {stage} | {data or '-'} | {len(rs)} | {stat('ppl_tinystories')} | "
                     f"{stat('ppl_wikitext2')} | {stat('train_seconds')} | {stat('peak_rss_mib')} |")
    (RESULTS / "recovery.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.5])
    p.add_argument("--methods", nargs="+", default=["lora", "kd", "full"])
    p.add_argument("--data", nargs="+", default=["tinystories", "alpaca"], choices=list(TRAIN))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--report", action="store_true", help="only write recovery.md from recovery.json")
    args = p.parse_args()
    args.lr = {"lora": 3e-3, "kd": 2e-3, "full": 2e-3}
    if not args.report:
        run_all(args)
    report()


if __name__ == "__main__":
    main()
