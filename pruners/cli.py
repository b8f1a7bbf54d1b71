"""The ``depprune`` command line: ``inspect`` a model's groups, ``prune`` it and report."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from .importance import AGGREGATIONS, ESTIMATORS

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    p = Parser(prog="depprune", description="Structured pruning of causal language models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    i = sub.add_parser("inspect", help="list the prunable groups of a model by kind and layer")
    i.add_argument("--model", required=True, help="model directory (config.json alone is enough: traced on meta)")
    i.add_argument("--json", action="store_true", help="print one JSON object")

    ev = sub.add_parser("eval", help="perplexity, zero-shot accuracy and speed of one or more models, side by side")
    ev.add_argument("--model", nargs="+", required=True, help="model directories (e.g. the original and the pruned one)")
    ev.add_argument("--tokenizer", help="tokenizer directory (default: each model's own)")
    ev.add_argument("--ppl", nargs="+", default=[], metavar="FILE", help="text files for perplexity (WikiText-2, PTB, any text)")
    ev.add_argument("--seq-len", type=int, default=128, help="perplexity window in tokens (128 as in LLM-Pruner; 2048)")
    ev.add_argument("--max-tokens", type=int, help="score at most this many tokens per perplexity file")
    ev.add_argument("--piqa", metavar="JSONL", help="PIQA jsonl (labels read from <name>-labels.lst beside it)")
    ev.add_argument("--openbookqa", metavar="TSV", help="OpenBookQA TSV")
    ev.add_argument("--limit", type=int, help="evaluate at most this many multiple-choice items per task")
    ev.add_argument("--speed", action="store_true", help="generation tokens/s and peak memory")
    ev.add_argument("--lm-eval-tasks", help="comma-separated lm-evaluation-harness tasks (needs lm-eval installed)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")

    pr = sub.add_parser(
        "prune", help="prune a model, save it and print a before/after report",
        description="Options may come from --config (YAML/JSON, see pruners.run_config); flags given here override it. "
        "The target is --ratio (a fraction of parameters) or --kind-ratio (a fraction of units per kind), not both.",
    )
    pr.add_argument("--config", help="YAML or JSON run file; command-line flags override its values")
    pr.add_argument("--model", help="model directory (or hub id) with config.json and weights")
    pr.add_argument(
        "--ratio", type=float,
        help="fraction of parameters to remove, in (0, 1); or give --kind-ratio (replaces a --config file's kind_ratios)",
    )
    pr.add_argument(
        "--kind-ratio", action=_KindRatios, type=_kind_ratio, metavar="KIND=FRACTION",
        help="instead of --ratio: the fraction of units removed from every pruned group of KIND, repeatable, e.g. "
        "--kind-ratio attention=0.25 --kind-ratio mlp_channel=0.5 (LLM-Pruner's per-layer ratio); the KINDs given "
        "are the kinds pruned. Replaces a --config file's ratio and kind_ratios (and its kinds, unless --kinds is given)",
    )
    pr.add_argument("--importance", help=f"importance estimator: {', '.join(sorted(ESTIMATORS))} (default l2)")
    pr.add_argument("--aggregation", help=f"group aggregation: {', '.join(sorted(AGGREGATIONS))} (default sum)")
    pr.add_argument(
        "--kinds", nargs="+",
        help="kinds to prune (default: attention mlp_channel): attention (KV groups or heads), attention_head, "
        "kv_group, query_head, mlp_channel, hidden_channel",
    )
    pr.add_argument("--strategy", help="uniform (same ratio per group, default) or global (lowest scores across layers)")
    pr.add_argument(
        "--layers", nargs=2, type=_layer_bound, metavar=("START", "END"),
        help="prune layers [START, END): indices (negative from the end) or fractions, e.g. 4 -2",
    )
    pr.add_argument("--min-units", type=int, help="units every group keeps at least (default 1)")
    pr.add_argument("--round-to", type=int, help="round kept units per group to a multiple of this (default 1)")
    pr.add_argument("--calibration", help="text or Alpaca .json/.jsonl file for gradient/activation estimators")
    pr.add_argument("--calibration-samples", type=int, help="calibration sequences (default 10)")
    pr.add_argument("--calibration-seq-len", type=int, help="tokens per calibration sequence (default 128)")
    pr.add_argument("--out", help="output directory (must be empty or absent unless --force)")
    pr.add_argument("--force", action="store_true", default=None, help="overwrite a non-empty --out")
    pr.add_argument("--eval-text", help="text file for perplexity before and after")
    pr.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    pr.add_argument("--seed", type=int, help="seed for random importance and calibration sampling (default 0)")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _layer_bound(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither a layer index nor a fraction") from None


def _kind_fraction(kind, value, text: str | None = None) -> float:
    """``value`` as a fraction in (0, 1) of the known ``kind``; else a ValueError naming ``text`` and the valid kinds.

    >>> _kind_fraction("mlp_channel", "0.5")
    0.5
    """
    from .planner import KIND_NAMES

    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if kind not in KIND_NAMES or not 0.0 < fraction < 1.0:
        text = f"{kind}={value}" if text is None else text
        raise ValueError(f"{text!r} is not KIND=FRACTION with FRACTION in (0, 1) and KIND one of {', '.join(KIND_NAMES)}")
    return fraction


def _kind_ratio(text: str) -> tuple[str, float]:
    """One ``--kind-ratio KIND=FRACTION``.

    >>> _kind_ratio("attention=0.25")
    ('attention', 0.25)
    """
    kind, _, value = text.partition("=")
    try:
        return kind, _kind_fraction(kind, value, text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _KindRatios(argparse.Action):
    """Repeated ``--kind-ratio`` options collected into one ``{kind: fraction}`` mapping."""

    def __call__(self, parser, namespace, values, option_string=None):
        kind, fraction = values
        ratios = dict(getattr(namespace, self.dest) or {})
        if kind in ratios:
            parser.error(f"argument {option_string}: {kind} is given twice")
        ratios[kind] = fraction
        setattr(namespace, self.dest, ratios)


# command-line flag -> path in the run config
FLAG_KEYS = {
    "model": ("model",), "ratio": ("ratio",), "kind_ratio": ("kind_ratios",), "importance": ("importance",),
    "aggregation": ("aggregation",), "kinds": ("kinds",), "strategy": ("strategy",), "layers": ("layers",), "min_units": ("min_units",),
    "round_to": ("round_to",), "calibration": ("calibration", "source"), "calibration_samples": ("calibration", "samples"),
    "calibration_seq_len": ("calibration", "seq_len"), "out": ("out",), "force": ("force",), "eval_text": ("eval_text",),
    "tokenizer": ("tokenizer",), "seed": ("seed",),
}


def run_config(args):
    """The run config: ``--config`` file values, overridden by the flags given on the command line."""
    from pydantic import ValidationError

    from .run_config import RunConfig, read_run_file

    data: dict = {}
    if args.config:
        try:
            data = read_run_file(args.config)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"depprune prune: --config: {e}") from e
    _target_from_command_line(args, data)
    for flag, path in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    for required in ("model", "out"):
        if data.get(required) is None:
            raise UsageError(f"depprune prune: --{required} is required (on the command line or in --config)")
    if data.get("ratio") is None and data.get("kind_ratios") is None:
        raise UsageError("depprune prune: one of --ratio / --kind-ratio is required (on the command line or in --config)")
    _validate_prune(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        if not err["loc"]:  # a cross-field check, e.g. both ratio and kind_ratios in --config
            raise UsageError(f"depprune prune: {err['msg'].removeprefix('Value error, ')}") from e
        flag = "--" + "-".join(str(x) for x in err["loc"] if isinstance(x, str)).replace("_", "-")
        raise UsageError(f"depprune prune: {flag} {err.get('input')!r}: {err['msg']}") from e


def _target_from_command_line(args, data: dict) -> None:
    """A target on the command line replaces the ``--config`` file's (``--kind-ratio`` its kinds too)."""
    if args.ratio is not None and args.kind_ratio:
        raise UsageError(
            "depprune prune: give one target, --ratio (a fraction of parameters) or --kind-ratio (of units per kind), not both"
        )
    if args.kind_ratio:
        data.pop("ratio", None)
        if args.kinds is None:
            data.pop("kinds", None)
    if args.ratio is not None:
        data.pop("kind_ratios", None)


def _inspect(args) -> dict:
    from .checkpoint import load_model
    from .pipeline import analyze, count_params

    model = load_model(args.model, weights=False)
    _, groups = analyze(model)
    return {"model": str(args.model), "params": count_params(model), "groups": [g.summary() for g in groups]}


def _print_inspect(report: dict) -> None:
    print(f"model: {report['model']}")
    print(f"parameters: {report['params']:,}")
    print(f"{'group':<24}{'kind':<16}{'layer':>6}{'units':>8}{'params/unit':>13}{'params':>12}  exact")
    for g in report["groups"]:
        layer = "-" if g["layer"] is None else g["layer"]
        print(f"{g['id']:<24}{g['kind']:<16}{layer:>6}{g['units']:>8}{g['unit_params']:>13,}{g['params']:>12,}  {'yes' if g['exact'] else 'no'}")
    kinds = Counter(g["kind"] for g in report["groups"])
    print("groups by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


def _validate_prune(data: dict) -> None:
    """Checks with messages naming the flag; ``data`` is the merged run mapping (hub ids resolved here)."""
    from .checkpoint import check_model_dir, has_weights

    ratio = data.get("ratio")
    if ratio is not None and (not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0):
        raise UsageError(f"depprune prune: --ratio {ratio} is outside (0, 1): it is the fraction of parameters to remove")
    kind_ratios = data.get("kind_ratios")
    if kind_ratios is not None and (not isinstance(kind_ratios, dict) or not kind_ratios):
        raise UsageError(f"depprune prune: kind_ratios {kind_ratios!r} must map kinds to fractions, e.g. {{mlp_channel: 0.5}}")
    try:
        for kind, value in (kind_ratios or {}).items():
            _kind_fraction(kind, value)
    except ValueError as e:
        raise UsageError(f"depprune prune: --kind-ratio {e}") from e
    importance = data.get("importance", "l2")
    if importance not in ESTIMATORS:
        raise UsageError(f"depprune prune: unknown --importance {importance!r}; valid: {', '.join(sorted(ESTIMATORS))}")
    aggregation = data.get("aggregation", "sum")
    if aggregation not in AGGREGATIONS:
        raise UsageError(f"depprune prune: unknown --aggregation {aggregation!r}; valid: {', '.join(sorted(AGGREGATIONS))}")
    src = check_model_dir(data["model"])
    data["model"] = str(src)  # a hub id is now its local snapshot
    if not has_weights(src):
        raise UsageError(f"depprune prune: {data['model']!r} has a config but no weights to prune")
    out = Path(data["out"])
    if out.exists() and not out.is_dir():
        raise UsageError(f"depprune prune: --out {data['out']!r} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not data.get("force"):
        raise UsageError(f"depprune prune: --out {data['out']!r} exists and is not empty; pass --force to overwrite it")
    if out.resolve() == src.resolve():
        raise UsageError("depprune prune: --out must differ from --model (the source is never modified)")
    if data.get("eval_text") and not Path(data["eval_text"]).is_file():
        raise UsageError(f"depprune prune: --eval-text {data['eval_text']!r} is not a file")
    from .importance import make_estimator, needs_of

    needs = needs_of(make_estimator(importance))
    source = (data.get("calibration") or {}).get("source")
    if needs and not source:
        raise UsageError(
            f"depprune prune: --importance {importance} reads {', '.join(sorted(needs))} from calibration data; pass --calibration FILE"
        )
    if source and not Path(source).is_file():
        raise UsageError(f"depprune prune: --calibration {source!r} is not a file")


def _prune(args) -> dict:
    from .checkpoint import load_model, save_pruned
    from .executor import PlanError
    from .pipeline import analyze, check_feasible, count_params, prune

    cfg = run_config(args)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    skeleton = load_model(cfg.model, weights=False)  # structure only: plan errors before loading weights
    analysis = analyze(skeleton)
    try:
        check_feasible(analysis[1], cfg, count_params(skeleton))
        model = load_model(cfg.model)
        tokenizer = None
        if cfg.calibration.source or cfg.eval_text:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model)
        result = prune(model, cfg, progress=not args.quiet, analysis=analysis, tokenizer=tokenizer)
    except PlanError as e:
        raise UsageError(f"depprune prune: {e}") from e
    report = {
        "model": cfg.model,
        "out": cfg.out,
        "importance": cfg.importance,
        "aggregation": cfg.aggregation,
        "kinds": list(cfg.kinds),
        "strategy": cfg.strategy,
        "layers": list(cfg.layers) if cfg.layers else None,
        "ratio_target": cfg.ratio,
        "kind_ratios": cfg.kind_ratios,
        "calibration": str(cfg.calibration.source) if cfg.calibration.source else None,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "ratio_achieved": round(result.achieved_ratio, 6),
        "group_ratio": round(result.plan.group_ratio, 6),
        "removed": result.plan.by_kind,
    }
    if cfg.eval_text:
        from .eval.perplexity import perplexity

        report["eval_text"] = cfg.eval_text
        report["ppl_before"] = perplexity(model, tokenizer, cfg.eval_text, progress=not args.quiet)
        report["ppl_after"] = perplexity(result.model, tokenizer, cfg.eval_text, progress=not args.quiet)
    run = {"config": cfg.model_dump(mode="json", exclude={"force"}), "report": report}
    save_pruned(result.model, cfg.out, result.record, source=cfg.tokenizer or cfg.model, force=cfg.force, run=run)
    return report


def _eval(args) -> dict:
    from transformers import AutoTokenizer

    from .checkpoint import load_model
    from .eval import generation_speed, perplexity, read_openbookqa, read_piqa, zero_shot
    from .pipeline import count_params

    for f in args.ppl + [x for x in (args.piqa, args.openbookqa) if x]:
        if not Path(f).is_file():
            raise UsageError(f"depprune eval: {f!r} is not a file")
    if args.seq_len < 1:
        raise UsageError(f"depprune eval: --seq-len {args.seq_len} must be positive")
    if not (args.ppl or args.piqa or args.openbookqa or args.speed or args.lm_eval_tasks):
        raise UsageError("depprune eval: nothing to evaluate; pass --ppl, --piqa, --openbookqa, --speed or --lm-eval-tasks")
    tasks = {}
    try:
        if args.piqa:
            tasks["piqa"] = read_piqa(args.piqa)
        if args.openbookqa:
            tasks["openbookqa"] = read_openbookqa(args.openbookqa)
    except (OSError, ValueError) as e:
        raise UsageError(f"depprune eval: {e}") from e
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    results = {}
    for path in args.model:
        model = load_model(path)
        tok = AutoTokenizer.from_pretrained(args.tokenizer or path)
        r: dict = {"params": count_params(model)}
        for f in args.ppl:
            r[f"ppl:{Path(f).name}@{args.seq_len}"] = perplexity(
                model, tok, f, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=not args.quiet
            )
        for name, items in tasks.items():
            scores = zero_shot(model, tok, items, limit=args.limit, progress=not args.quiet)
            r[f"{name}:acc"], r[f"{name}:acc_norm"] = scores["acc"], scores["acc_norm"]
        if args.speed:
            sp = generation_speed(model)
            r["tokens_per_s"], r["param_bytes"], r["peak_bytes"] = sp["tokens_per_s"], sp["param_bytes"], sp["peak_bytes"]
        if args.lm_eval_tasks:
            from .eval.lm_eval_adapter import run_lm_eval

            try:
                for task, metrics in run_lm_eval(model, tok, args.lm_eval_tasks.split(","), args.limit).items():
                    r.update({f"{task}:{k}": v for k, v in metrics.items()})
            except ImportError as e:
                raise UsageError(f"depprune eval: {e}") from e
        results[path] = r
    return {"models": results}


def _print_eval(report: dict) -> None:
    models = list(report["models"])
    metrics = list(dict.fromkeys(k for r in report["models"].values() for k in r))
    width = max(14, *(len(Path(m).name) + 2 for m in models))
    first = max(len(k) for k in metrics) + 2
    print(f"{'metric':<{first}}" + "".join(f"{Path(m).name:>{width}}" for m in models))
    for k in metrics:
        cells = []
        for m in models:
            v = report["models"][m].get(k)
            cells.append(f"{'-':>{width}}" if v is None else f"{v:>{width},}" if isinstance(v, int) else f"{v:>{width}.4f}")
        print(f"{k:<{first}}" + "".join(cells))


def _print_prune(r: dict) -> None:
    print(f"pruned {r['model']} -> {r['out']}  (importance {r['importance']}, aggregation {r['aggregation']}, kinds {' '.join(r['kinds'])})")
    print(f"{'':<14}{'before':>14}{'after':>14}")
    print(f"{'parameters':<14}{r['params_before']:>14,}{r['params_after']:>14,}")
    if "ppl_before" in r:
        print(f"{'perplexity':<14}{r['ppl_before']:>14.3f}{r['ppl_after']:>14.3f}   ({Path(r['eval_text']).name})")
    if r.get("ratio_target") is not None:
        target = f"target {r['ratio_target']:.2%}"
    else:
        target = "kind ratios " + ", ".join(f"{k}={v:g}" for k, v in r["kind_ratios"].items())
    print(f"removed {r['ratio_achieved']:.2%} of parameters ({target}); group ratio {r['group_ratio']:.3f}")
    for kind, s in r["removed"].items():
        print(f"  {kind:<16} {s['removed_units']:>6} of {s['units']:>6} units  ({s['removed_params']:,} params)")


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import ModelSourceError
    from .importance import load_plugins

    load_plugins()  # estimators from installed packages show up in --help and --importance
    try:
        args = build_parser().parse_args(argv)
        if args.command == "inspect":
            report = _inspect(args)
            print(json.dumps(report)) if args.json else _print_inspect(report)
        elif args.command == "eval":
            report = _eval(args)
            print(json.dumps(report)) if args.json else _print_eval(report)
        else:
            report = _prune(args)
            print(json.dumps(report)) if args.json else _print_prune(report)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ModelSourceError, FileExistsError) as e:
        print(f"error: depprune {getattr(args, 'command', '')}: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
