"""Learned pruning (compresso) against the best one-shot estimator + recovery, at equal training steps.

For each model (stories260K and its -qwen2 re-expression: the same weights) and each ratio of
parameters removed, on TinyStories training text:

- ``one-shot``: wanda-sp (the best estimator of the ablation), uniform per layer, then LoRA
  recovery (``depprune recover``'s recipe) for ``--steps`` steps -- and for ``--steps`` +
  ``--post-steps``, the budget of compresso with post fine-tuning;
- ``compresso`` with and without the collaborative prompt: gates and LoRA trained together for
  ``--steps`` steps, exported sliced -- and the same followed by ``--post-steps`` of LoRA recovery
  (the paper's ablation of post fine-tuning).

Every run reports TinyStories-valid and WikiText-2 perplexity, its exact parameter count,
training time and (compresso) the learned kept units per layer.  Runs are appended to
``benchmarks/results/compresso.json`` as they finish (an interrupted benchmark resumes);
``--report`` writes ``compresso.md`` and ``compresso.png``.  Two runs go at once, one thread each.

    python benchmarks/compresso.py                 # the grid (about 15 minutes on 2 cores)
    python benchmarks/compresso.py --models stories260K --ratios 0.5 --steps 1200 --post-steps 0 \
        --stages one-shot compresso-no-prompt     # does a longer run close the gap?
    python benchmarks/compresso.py --report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recover_methods import MODELS, RESULTS, TOKENIZER, TRAIN, VALID, evaluate
from runner import run_jobs

BATCH, SEQ_LEN, LR = 8, 128, 5e-3  # LoRA lr 5e-3: better than recovery's 2e-3 for both methods here
STAGES = ("one-shot", "compresso", "compresso-no-prompt")


def _recover(model, tok, steps: int, seed: int):
    from recovery import RecoverConfig, recover

    rc = RecoverConfig.model_validate({
        "method": "lora", "data": {"source": str(TRAIN["tinystories"]), "seq_len": SEQ_LEN},
        "train": {"max_steps": steps, "lr": LR, "batch_size": BATCH, "seed": seed, "eval_every": max(1, steps)},
    })
    return recover(model, tok, rc, progress=False, inplace=True).model


def one_run(job: dict, queue) -> None:
    """Prune (and train) one configuration; the result dict goes to ``queue``."""
    import torch

    torch.set_num_threads(1)
    from learned import CompressoConfig, compresso
    from pruners import (
        CalibrationConfig,
        PruneConfig,
        calibration_samples,
        count_params,
        load_model,
        load_tokenizer,
        prune,
    )

    tok = load_tokenizer(TOKENIZER)
    dense = load_model(MODELS[job["model"]])
    out = dict(job)
    start = time.perf_counter()
    if job["stage"] == "dense":
        out.update(evaluate(dense, tok), params=count_params(dense))
        queue.put(out)
        return
    if job["stage"] == "one-shot":
        cfg = PruneConfig(ratio=job["ratio"], importance="wanda-sp", seed=job["seed"],
                          calibration=CalibrationConfig(source=TRAIN["tinystories"], samples=64, seq_len=128))
        result = prune(dense, cfg, samples=calibration_samples(cfg.calibration, tok, job["seed"]), progress=False)
        model = _recover(result.model, tok, job["steps"] + job["post_steps"], job["seed"])
        kept = None
    else:
        options = CompressoConfig.model_validate({
            "data": {"source": str(TRAIN["tinystories"]), "seq_len": SEQ_LEN},
            "train": {"max_steps": job["steps"], "lr": LR, "batch_size": BATCH, "eval_every": max(1, job["steps"])},
            "prompt": {"enabled": job["stage"] == "compresso"},
        })
        result = compresso(dense, PruneConfig(ratio=job["ratio"], seed=job["seed"]), options, tok, progress=False)
        out["expected_sparsity"] = result.report["expected_sparsity"]
        out["params_target"] = result.report["params_target"]
        kept = result.report["kept_per_layer"]
        model = _recover(result.model, tok, job["post_steps"], job["seed"]) if job["post_steps"] else result.model
    out["train_seconds"] = time.perf_counter() - start
    out["params"] = count_params(model)
    out["kept_per_layer"] = kept or {
        kind: {"layers": [g.layer for g in gs], "kept": [len(result.plan.keep.get(g.id, range(g.n_units))) for g in gs],
               "units": [g.n_units for g in gs]}
        for kind in ("kv_group", "mlp_channel")
        for gs in [[g for g in result.groups if g.kind == kind]]
    }
    out.update(evaluate(model, tok))
    if job["stage"] == "compresso":  # and with the prompt it was trained behind, before every window
        from learned import DEFAULT_PROMPT, prompt_ids
        from pruners import perplexity

        prefix = [tok.bos_token_id, *prompt_ids(tok, DEFAULT_PROMPT)]
        out["ppl_tinystories_prompted"] = perplexity(model, tok, VALID, prefix=prefix, progress=False)
    queue.put(out)


def key(job: dict) -> str:
    return "|".join(str(job.get(k)) for k in ("model", "ratio", "stage", "steps", "post_steps", "seed"))


def jobs(args) -> list[dict]:
    out = []
    for model in args.models:
        out.append({"model": model, "stage": "dense", "ratio": 0.0, "steps": 0, "post_steps": 0, "seed": 0})
        for ratio in args.ratios:
            for stage in args.stages:
                for post in sorted({0, args.post_steps}):
                    out.append({"model": model, "stage": stage, "ratio": ratio, "steps": args.steps, "post_steps": post,
                                "seed": 0})
    return out


def run_all(args) -> None:
    path = RESULTS / "compresso.json"
    done = json.loads(path.read_text()) if path.exists() else []
    have = {key(r) for r in done}
    todo = [j for j in jobs(args) if key(j) not in have]
    run_jobs(todo, one_run, key, path, done, args.jobs,
             lambda r: f"TinyStories PPL {r['ppl_tinystories']:.3f}, {r['params']:,} params")


LABELS = {"one-shot": "wanda-sp + LoRA recovery", "compresso": "compresso (prompt)",
          "compresso-no-prompt": "compresso (no prompt)"}


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | removed | method | training steps | params | TinyStories PPL | (prompt at evaluation) | "
             "WikiText-2 PPL | time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["ratio"], r["steps"] + r["post_steps"], r["post_steps"],
                                         STAGES.index(r["stage"]) if r["stage"] in STAGES else -1)):
        if r["stage"] == "dense":
            steps, label, t = "-", "dense", "-"
        else:
            label = LABELS[r["stage"]]
            steps = f"{r['steps'] + r['post_steps']}" if r["stage"] == "one-shot" else (
                f"{r['steps']} + {r['post_steps']} post" if r["post_steps"] else f"{r['steps']}")
            t = f"{r['train_seconds']:.0f}"
        prompted = f"{r['ppl_tinystories_prompted']:.3f}" if "ppl_tinystories_prompted" in r else "-"
        lines.append(f"| {r['model']} | {r['ratio']:.0%} | {label} | {steps} | {r['params']:,} | "
                     f"{r['ppl_tinystories']:.3f} | {prompted} | {r['ppl_wikitext2']:.1f} | {t} |")
    return lines


def write_plot(rows: list[dict], path: Path, model: str = "stories260K") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted({r["ratio"] for r in rows if r["model"] == model and r["ratio"] > 0})
    counts = [r["steps"] for r in rows if r["stage"] != "dense"]
    steps = max(set(counts), key=counts.count)  # the grid's runs (not the longer extra ones)
    kinds = (("kv_group", "KV groups kept (of 4)"), ("mlp_channel", "MLP channels kept (of 172)"))
    fig, axes = plt.subplots(len(kinds), len(ratios), figsize=(5.5 * len(ratios), 7), squeeze=False)
    styles = {"one-shot": ("black", "s", "--"), "compresso": ("tab:blue", "o", "-"),
              "compresso-no-prompt": ("tab:orange", "^", "-")}
    for j, ratio in enumerate(ratios):
        for i, (kind, ylabel) in enumerate(kinds):
            ax = axes[i][j]
            for r in rows:
                if r["model"] != model or r["ratio"] != ratio or r["post_steps"] or r["steps"] != steps:
                    continue
                entry = r["kept_per_layer"][kind]
                color, marker, line = styles[r["stage"]]
                ax.plot(entry["layers"], entry["kept"], color=color, marker=marker, linestyle=line,
                        label=LABELS[r["stage"]].replace(" + LoRA recovery", " (uniform)"))
            ax.set_xticks(sorted(set(entry["layers"])))
            ax.set_xlabel("layer")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{ratio:.0%} of parameters removed")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"{model}: units kept per layer, learned in {steps} steps (compresso) against one-shot uniform")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report() -> None:
    rows = json.loads((RESULTS / "compresso.json").read_text())
    write_plot(rows, RESULTS / "compresso.png")
    text = (RESULTS / "compresso.md").read_text() if (RESULTS / "compresso.md").exists() else ""
    marker = "<!-- table -->"
    head, _, tail = text.partition(marker)
    tail = tail.partition("<!-- end table -->")[2]
    body = "\n".join(table(rows))
    (RESULTS / "compresso.md").write_text(f"{head}{marker}\n{body}\n<!-- end table -->{tail}")
    print(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["stories260K", "stories260K-qwen2"], choices=sorted(MODELS))
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.5])
    ap.add_argument("--steps", type=int, default=400, help="compresso's training steps (one-shot: recovery steps)")
    ap.add_argument("--post-steps", type=int, default=200, help="LoRA fine-tuning after compresso (and added to one-shot's)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="write compresso.md and compresso.png from compresso.json")
    args = ap.parse_args()
    if args.report:
        report()
    else:
        run_all(args)


if __name__ == "__main__":
    main()
