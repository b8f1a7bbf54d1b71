"""Benchmark: LLM-Pruner's ablations on a real model -- which importance criterion wins?

On ``../shared/models/stories260K`` (real weights) this prunes ``attention`` (KV groups) and
``mlp_channel`` groups uniformly per layer at several parameter reductions (default
10/20/30/50%), with no recovery, and reports perplexity on TinyStories-valid (the model's own
domain) and on WikiText-2 (out of domain, ``--wiki-seq-len 128`` as in LLM-Pruner's tables,
the first ``--wiki-max-tokens`` tokens).

Runs
----
* every registered estimator with ``sum`` aggregation, and every aggregation for
  ``taylor-element``;
* seeds: ``random`` and every calibration-based estimator run under each ``--seeds`` value
  (the seed draws the random scores, or the calibration windows: 10 x 128 tokens of
  TinyStories-train); the deterministic ``l1``/``l2`` run once;
* a **no-coupling baseline** for ``l2`` and ``taylor-element``: each tensor of a group drops
  its own lowest-scoring units (the same number per tensor as the grouped plan), judged by
  its own row of member scores, as if every layer's tensors were pruned independently.
  Such a model cannot be sliced into a smaller dense one (a ``down_proj`` column no longer
  matches a ``gate_proj`` row), so it is evaluated with the dropped slices zeroed.  To show
  that masked and sliced evaluation are comparable, the grouped ``l2`` plan is evaluated
  both ways at every ratio and the two perplexities are recorded (they must agree).

Scores (:func:`pruners.pipeline.member_scores`) are computed once per (estimator, seed) -- one
calibration pass -- and every aggregation and ratio is planned from them; every grouped plan
is sliced for real with :func:`pruners.slicing.executor.execute` (the same path as ``depprune prune``).

Run it from the repository root after ``pip install -e .[bench]`` (matplotlib for the plot)::

    python benchmarks/ablation.py                     # ~40 min on 2 CPUs; results in benchmarks/results/
    python benchmarks/ablation.py --quick --out /tmp/a  # 2 estimators, 1 ratio, 1 seed: a smoke run

It writes ``ablation.json`` (every run), ``ablation.md`` (tables and the claims checked
against LLM-Pruner's) and ``ablation_ppl.png`` (perplexity vs parameter reduction).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import pruners
from pruners import (
    AGGREGATIONS,
    ESTIMATORS,
    CalibrationConfig,
    PlannerConfig,
    PruneConfig,
    aggregate,
    analyze,
    calibration_samples,
    count_params,
    execute,
    load_model,
    make_estimator,
    make_plan,
    masked_copy,
    needs_of,
    perplexity,
    removed_positions,
    select_groups,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
KINDS = ["attention", "mlp_channel"]
UNCOUPLED = ("l2", "taylor-element")  # estimators with one score row per member


@dataclass
class Setup:
    model: torch.nn.Module
    tokenizer: object
    trace: object
    groups: list
    chosen: list
    params: int
    args: argparse.Namespace


def evaluate(model: torch.nn.Module, s: Setup) -> dict[str, float]:
    """TinyStories-valid perplexity (documents, context 512) and WikiText-2 (windows of 128)."""
    a = s.args
    return {
        "ppl_tinystories": perplexity(model, s.tokenizer, a.tinystories, progress=False),
        "ppl_wikitext2": perplexity(
            model, s.tokenizer, a.wikitext, seq_len=a.wiki_seq_len, max_tokens=a.wiki_max_tokens, progress=False
        ),
    }


def member_scores(s: Setup, importance: str, seed: int) -> dict[str, torch.Tensor]:
    """The estimator's rows, ``(n_members, n_units)``, of every planned group (calibration drawn with ``seed``)."""
    samples = None
    cal = CalibrationConfig(source=s.args.calibration, samples=s.args.samples, seq_len=s.args.seq_len)
    if needs_of(make_estimator(importance)):
        samples = calibration_samples(cal, s.tokenizer, seed)
    config = PruneConfig(ratio=0.5, importance=importance, seed=seed, calibration=cal)  # ratio unused: scores only
    return pruners.member_scores(s.model, s.chosen, config, samples, progress=False)


def uncoupled_drops(s: Setup, rows: dict[str, torch.Tensor], keep: dict[str, list[int]]) -> list[tuple[str, int, np.ndarray]]:
    """Each member drops its own lowest-scoring units, as many as the grouped plan drops."""
    drops = []
    for g in s.chosen:
        if g.id not in keep:
            continue
        n_drop = g.n_units - len(keep[g.id])
        for m, row in zip(g.members, rows[g.id]):
            gone = np.argsort(row.numpy(), kind="stable")[:n_drop]
            drops.append((m.param, m.axis, np.flatnonzero(np.isin(m.unit_of, gone))))
    return drops


def runs(args: argparse.Namespace) -> list[tuple[str, list[str], list[int]]]:
    """(estimator, aggregations, seeds) to score."""
    out = []
    for name in args.estimators:
        seeded = name == "random" or needs_of(make_estimator(name))
        aggs = sorted(AGGREGATIONS) if name == "taylor-element" and not args.quick else ["sum"]
        out.append((name, aggs, list(args.seeds) if seeded else [args.seeds[0]]))
    return out


def run_all(s: Setup) -> list[dict]:
    rows = [{"estimator": "dense", "aggregation": "-", "seed": None, "coupling": "-", "ratio_target": 0.0,
             "ratio_achieved": 0.0, "group_ratio": 0.0, **evaluate(s.model, s)}]
    plan_cfgs = {r: PlannerConfig(ratio=r, kinds=KINDS) for r in s.args.ratios}
    todo = runs(s.args)
    total = sum(len(aggs) * len(seeds) for _, aggs, seeds in todo) * len(plan_cfgs)
    done, t0 = 0, time.time()
    for name, aggs, seeds in todo:
        for seed in seeds:
            member = member_scores(s, name, seed)
            for agg in aggs:
                scores = {gid: aggregate(agg, m, gid, name).numpy() for gid, m in member.items()}
                for ratio, cfg in plan_cfgs.items():
                    plan = make_plan(s.groups, scores, cfg, s.params)
                    pruned, _ = execute(s.model, s.trace, s.groups, plan.keep)
                    base = {"estimator": name, "aggregation": agg, "seed": seed, "ratio_target": ratio,
                            "ratio_achieved": 1 - count_params(pruned) / s.params, "group_ratio": plan.group_ratio}
                    grouped = {**base, "coupling": "grouped", **evaluate(pruned, s)}
                    rows.append(grouped)
                    if agg == "sum" and name in UNCOUPLED:
                        masked = masked_copy(s.model, uncoupled_drops(s, member, plan.keep))
                        rows.append({**base, "coupling": "uncoupled", **evaluate(masked, s)})
                    if agg == "sum" and name == "l2":
                        masked = masked_copy(s.model, removed_positions(s.chosen, plan.keep))
                        rows.append({**base, "coupling": "grouped-masked", **evaluate(masked, s)})
                    done += 1
                    print(f"[{done}/{total} {time.time() - t0:6.0f}s] {name:<15}{agg:<5} seed {seed} ratio {ratio:.2f}: "
                          f"TinyStories {grouped['ppl_tinystories']:9.3f}  WikiText-2 {grouped['ppl_wikitext2']:9.1f}", flush=True)
    return rows


# ---------------------------------------------------------------- report


def _stats(values: list[float]) -> tuple[float, float, int]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def summarise(rows: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """(estimator, aggregation, coupling, ratio, metric) -> (mean, std, n) over seeds."""
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        for metric in ("ppl_tinystories", "ppl_wikitext2", "ratio_achieved"):
            acc.setdefault((r["estimator"], r["aggregation"], r["coupling"], r["ratio_target"], metric), []).append(r[metric])
    return {k: _stats(v) for k, v in acc.items()}


def _cell(summary, key) -> str:
    if key not in summary:
        return "-"
    mean, std, n = summary[key]
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


def _table(summary, entries: list[tuple[str, str, str]], ratios: list[float], metric: str, label: str) -> list[str]:
    head = f"| {label} | " + " | ".join(f"{r:.0%}" for r in ratios) + " |"
    lines = [head, "|" + "---|" * (len(ratios) + 1)]
    for est, agg, coupling in entries:
        cells = [_cell(summary, (est, agg, coupling, r, metric)) for r in ratios]
        if label == "aggregation":
            name = agg
        elif coupling == "grouped" and agg == "sum":
            name = est
        else:
            name = f"{est} ({agg if coupling == 'grouped' else coupling})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _mean(summary, est, agg, coupling, ratio, metric="ppl_tinystories") -> float:
    return summary[(est, agg, coupling, ratio, metric)][0]


def claims(summary, estimators: list[str], ratios: list[float]) -> list[str]:
    """LLM-Pruner's claims, each checked at every ratio on both datasets (lower mean PPL wins; a
    difference smaller than either side's standard deviation over seeds is flagged)."""
    out = []

    def verdict(wins: int, total: int) -> str:
        if wins == total:
            return "**reproduces**"
        return "**does not reproduce**" if wins == 0 else f"**partly reproduces** ({wins}/{total})"

    def compare(a, b, metric) -> tuple[int, list[str]]:
        wins, cells = 0, []
        for r in ratios:
            (pa, sa, _), (pb, sb, _) = summary[(*a, r, metric)], summary[(*b, r, metric)]
            wins += pa < pb
            close = " (within the seed spread)" if abs(pa - pb) < max(sa, sb) else ""
            cells.append(f"{r:.0%}: {pa:.2f} vs {pb:.2f}{close}")
        return wins, cells

    taylor = [e for e in ("taylor-element", "taylor-vector") if e in estimators]
    baselines = [e for e in ("l1", "l2", "random") if e in estimators]
    checks = [(f"first-order Taylor ({t}) beats {b}", (t, "sum", "grouped"), (b, "sum", "grouped")) for t in taylor for b in baselines]
    if len(taylor) == 2:
        checks.append(("element-wise Taylor beats vector-wise Taylor", ("taylor-element", "sum", "grouped"), ("taylor-vector", "sum", "grouped")))
    checks += [(f"grouping matters: grouped {e} beats the same estimator without coupling", (e, "sum", "grouped"), (e, "sum", "uncoupled"))
               for e in UNCOUPLED if e in estimators]
    for text, a, b in checks:
        for metric, data in (("ppl_tinystories", "TinyStories"), ("ppl_wikitext2", "WikiText-2")):
            wins, cells = compare(a, b, metric)
            out.append(f"- {text} on {data}: {verdict(wins, len(ratios))} -- {'; '.join(cells)}")
    return out


def write_markdown(rows: list[dict], args, meta: dict, path: Path) -> None:
    summary = summarise(rows)
    ratios = list(args.ratios)
    present = [e for e in args.estimators if any(r["estimator"] == e for r in rows)]
    main = [(e, "sum", "grouped") for e in present]
    aggs = [("taylor-element", a, "grouped") for a in sorted(AGGREGATIONS)
            if any(r["estimator"] == "taylor-element" and r["aggregation"] == a for r in rows)]
    coupling = [(e, "sum", c) for e in UNCOUPLED if e in present for c in ("grouped", "uncoupled")]
    dense = next(r for r in rows if r["estimator"] == "dense")
    lines = [
        "# Importance ablation on stories260K (no recovery)",
        "",
        f"Generated by `benchmarks/ablation.py` on {meta['date']} ({meta['machine']}, torch {meta['torch']}, "
        f"{meta['minutes']:.0f} min).",
        f"Model `{meta['model']}` ({meta['params']:,} parameters); kinds {KINDS}, uniform per-layer plan; "
        f"calibration {args.samples} x {args.seq_len} tokens of `{Path(args.calibration).name}`; seeds {list(args.seeds)} "
        "for `random` and every calibration-based estimator (mean ± sample std over seeds), one run for `l1`/`l2`.",
        f"TinyStories: `{Path(args.tinystories).name}` (46 stories, context 512). WikiText-2: `{Path(args.wikitext).name}`, "
        f"windows of {args.wiki_seq_len}, first {args.wiki_max_tokens:,} tokens (out of domain for a TinyStories model).",
        f"Dense model: TinyStories PPL {dense['ppl_tinystories']:.3f}, WikiText-2 PPL {dense['ppl_wikitext2']:.1f}.",
        "Columns are the parameter-reduction targets; achieved reductions are in `ablation.json` "
        "(" + ", ".join(f"{r:.0%} -> {_mean(summary, 'l2', 'sum', 'grouped', r, 'ratio_achieved'):.1%}"
                        for r in ratios if ("l2", "sum", "grouped", r, "ratio_achieved") in summary) + " for l2).",
        "",
        "![PPL vs parameter reduction](ablation_ppl.png)",
        "",
        "## Every estimator (sum aggregation): TinyStories PPL",
        "",
        *_table(summary, main, ratios, "ppl_tinystories", "estimator"),
        "",
        "## Every estimator (sum aggregation): WikiText-2 PPL",
        "",
        *_table(summary, main, ratios, "ppl_wikitext2", "estimator"),
    ]
    if len(aggs) > 1:
        lines += ["", "## Aggregations for taylor-element: TinyStories PPL", "",
                  "`mean` is `sum` divided by the number of members, the same for every unit of a group, so "
                  "under this per-group (uniform) plan it keeps exactly the units `sum` keeps; the two differ "
                  "only under `--strategy global`.", "",
                  *_table(summary, aggs, ratios, "ppl_tinystories", "aggregation"),
                  "", "## Aggregations for taylor-element: WikiText-2 PPL", "",
                  *_table(summary, aggs, ratios, "ppl_wikitext2", "aggregation")]
    if coupling:
        lines += ["", "## Grouping: coupled groups vs each tensor pruned on its own (TinyStories PPL)", "",
                  *_table(summary, coupling, ratios, "ppl_tinystories", "estimator"),
                  "", "Masked vs sliced evaluation of the same grouped l2 plan (TinyStories PPL): " + ", ".join(
                      f"{r:.0%} {_mean(summary, 'l2', 'sum', 'grouped-masked', r):.4f} vs {_mean(summary, 'l2', 'sum', 'grouped', r):.4f}"
                      for r in ratios if ("l2", "sum", "grouped-masked", r, "ppl_tinystories") in summary) + "."]
    lines += ["", "## LLM-Pruner's claims on this model", "", *claims(summary, present, ratios), ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_plot(rows: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    dense = next(r for r in rows if r["estimator"] == "dense")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = dict(zip(args.estimators, plt.get_cmap("tab10").colors))  # no coupling: same colour, dashed
    for ax, metric, title in zip(axes, ("ppl_tinystories", "ppl_wikitext2"), ("TinyStories-valid", "WikiText-2")):
        series = [(e, "sum", "grouped") for e in args.estimators] + [(e, "sum", "uncoupled") for e in UNCOUPLED]
        for est, agg, coupling in series:
            pts = [(summary[(est, agg, coupling, r, "ratio_achieved")][0], *summary[(est, agg, coupling, r, metric)][:2])
                   for r in args.ratios if (est, agg, coupling, r, metric) in summary]
            if not pts:
                continue
            x, y, err = zip(*[(0.0, dense[metric], 0.0), *pts])
            label = est if coupling == "grouped" else f"{est} (no coupling)"
            ax.errorbar([100 * v for v in x], y, yerr=err, marker="o", ms=3, capsize=2, label=label,
                        color=colors.get(est), linestyle="--" if coupling == "uncoupled" else "-")
        ax.set_yscale("log")
        ax.set_xlabel("parameters removed (%)")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(f"stories260K, {title}, no recovery")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = SHARED / "data"
    p.add_argument("--model", default=str(SHARED / "models" / "stories260K"))
    p.add_argument("--calibration", default=str(data / "tinystories-train" / "tinystories-train.cased.txt"))
    p.add_argument("--tinystories", default=str(data / "tinystories-valid" / "TinyStories-valid.first46.txt"))
    p.add_argument("--wikitext", default=str(data / "wikitext-2-raw" / "wiki.test.raw"))
    p.add_argument("--wiki-seq-len", type=int, default=128)
    p.add_argument("--wiki-max-tokens", type=int, default=65536)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--estimators", nargs="+", default=sorted(ESTIMATORS), choices=sorted(ESTIMATORS))
    p.add_argument("--threads", type=int, help="torch CPU threads (1 avoids oversubscription on a shared machine)")
    p.add_argument("--quick", action="store_true", help="smoke run: l2 and taylor-element, ratio 0.2, seed 0")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--report-only", metavar="JSON", help="re-render ablation.md and the plot from a saved ablation.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text(encoding="utf-8"))
        saved_args = argparse.Namespace(**saved["meta"]["args"])
        write_markdown(saved["rows"], saved_args, saved["meta"], out / "ablation.md")
        write_plot(saved["rows"], saved_args, out / "ablation_ppl.png")
        print(f"re-rendered {out / 'ablation.md'} and ablation_ppl.png from {args.report_only}")
        return
    if args.quick:
        args.estimators, args.ratios, args.seeds = ["l2", "taylor-element"], [0.2], [0]
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    from transformers import AutoTokenizer

    model = load_model(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tr, groups = analyze(model)
    s = Setup(model, tokenizer, tr, groups, select_groups(groups, KINDS), count_params(model), args)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    rows = run_all(s)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items()), "the source model was modified"
    meta = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "model": Path(args.model).name, "params": s.params,
            "minutes": (time.time() - t0) / 60, "args": {k: v for k, v in vars(args).items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
    write_markdown(rows, args, meta, out / "ablation.md")
    write_plot(rows, args, out / "ablation_ppl.png")
    print(f"wrote {out / 'ablation.md'}, ablation.json, ablation_ppl.png in {meta['minutes']:.1f} min")


if __name__ == "__main__":
    main()
