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

    pr = sub.add_parser("prune", help="prune a model, save it and print a before/after report")
    pr.add_argument("--model", required=True, help="model directory with config.json and weights")
    pr.add_argument("--ratio", required=True, type=float, help="fraction of parameters to remove, in (0, 1)")
    pr.add_argument(
        "--importance", default="l2", help=f"importance estimator: {', '.join(sorted(ESTIMATORS))} (default l2)"
    )
    pr.add_argument("--aggregation", default="sum", help=f"group aggregation: {', '.join(sorted(AGGREGATIONS))}")
    pr.add_argument(
        "--kinds", nargs="+", default=["attention", "mlp_channel"],
        help="kinds to prune: attention (KV groups or heads), attention_head, kv_group, query_head, mlp_channel, hidden_channel",
    )
    pr.add_argument("--calibration", help="text or Alpaca .json/.jsonl file for gradient/activation estimators")
    pr.add_argument("--calibration-samples", type=int, default=10, help="calibration sequences (default 10)")
    pr.add_argument("--calibration-seq-len", type=int, default=128, help="tokens per calibration sequence (default 128)")
    pr.add_argument("--out", required=True, help="output directory (must be empty or absent unless --force)")
    pr.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    pr.add_argument("--eval-text", help="text file for perplexity before and after")
    pr.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


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


def _validate_prune(args) -> None:
    from .checkpoint import check_model_dir, has_weights

    if not 0.0 < args.ratio < 1.0:
        raise UsageError(f"depprune prune: --ratio {args.ratio} is outside (0, 1): it is the fraction of parameters to remove")
    if args.importance not in ESTIMATORS:
        raise UsageError(f"depprune prune: unknown --importance {args.importance!r}; valid: {', '.join(sorted(ESTIMATORS))}")
    if args.aggregation not in AGGREGATIONS:
        raise UsageError(f"depprune prune: unknown --aggregation {args.aggregation!r}; valid: {', '.join(sorted(AGGREGATIONS))}")
    src = check_model_dir(args.model)
    args.model = str(src)  # a hub id is now its local snapshot
    if not has_weights(src):
        raise UsageError(f"depprune prune: {args.model!r} has a config but no weights to prune")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"depprune prune: --out {args.out!r} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"depprune prune: --out {args.out!r} exists and is not empty; pass --force to overwrite it")
    if out.resolve() == src.resolve():
        raise UsageError("depprune prune: --out must differ from --model (the source is never modified)")
    if args.eval_text and not Path(args.eval_text).is_file():
        raise UsageError(f"depprune prune: --eval-text {args.eval_text!r} is not a file")
    from .importance import make_estimator, needs_of

    needs = needs_of(make_estimator(args.importance))
    if needs and not args.calibration:
        raise UsageError(
            f"depprune prune: --importance {args.importance} reads {', '.join(sorted(needs))} from calibration data; pass --calibration FILE"
        )
    if args.calibration and not Path(args.calibration).is_file():
        raise UsageError(f"depprune prune: --calibration {args.calibration!r} is not a file")
    if args.calibration_samples < 1 or args.calibration_seq_len < 2:
        raise UsageError("depprune prune: --calibration-samples must be >= 1 and --calibration-seq-len >= 2")


def _prune(args) -> dict:
    from pydantic import ValidationError

    from .checkpoint import load_model, save_pruned
    from .executor import PlanError
    from .pipeline import PruneConfig, analyze, check_feasible, count_params, prune

    _validate_prune(args)
    try:
        config = PruneConfig(
            ratio=args.ratio,
            importance=args.importance,
            aggregation=args.aggregation,
            kinds=args.kinds,
            seed=args.seed,
            calibration={"source": args.calibration, "samples": args.calibration_samples, "seq_len": args.calibration_seq_len},
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"depprune prune: --{err['loc'][0]}: {err['msg']}") from e
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    skeleton = load_model(args.model, weights=False)  # structure only: plan errors before loading weights
    analysis = analyze(skeleton)
    try:
        check_feasible(analysis[1], config, count_params(skeleton))
        model = load_model(args.model)
        tokenizer = None
        if args.calibration or args.eval_text:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        result = prune(model, config, progress=not args.quiet, analysis=analysis, tokenizer=tokenizer)
    except PlanError as e:
        raise UsageError(f"depprune prune: {e}") from e
    report = {
        "model": str(args.model),
        "out": str(args.out),
        "importance": args.importance,
        "aggregation": args.aggregation,
        "kinds": list(args.kinds),
        "ratio_target": args.ratio,
        "calibration": args.calibration,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "ratio_achieved": round(result.achieved_ratio, 6),
        "group_ratio": round(result.plan.group_ratio, 6),
        "removed": result.plan.by_kind,
    }
    if args.eval_text:
        from .evaluate import perplexity

        report["eval_text"] = args.eval_text
        report["ppl_before"] = perplexity(model, tokenizer, args.eval_text, progress=not args.quiet)
        report["ppl_after"] = perplexity(result.model, tokenizer, args.eval_text, progress=not args.quiet)
    save_pruned(result.model, args.out, result.record, source=args.tokenizer or args.model, force=args.force)
    return report


def _print_prune(r: dict) -> None:
    print(f"pruned {r['model']} -> {r['out']}  (importance {r['importance']}, aggregation {r['aggregation']}, kinds {' '.join(r['kinds'])})")
    print(f"{'':<14}{'before':>14}{'after':>14}")
    print(f"{'parameters':<14}{r['params_before']:>14,}{r['params_after']:>14,}")
    if "ppl_before" in r:
        print(f"{'perplexity':<14}{r['ppl_before']:>14.3f}{r['ppl_after']:>14.3f}   ({Path(r['eval_text']).name})")
    print(f"removed {r['ratio_achieved']:.2%} of parameters (target {r['ratio_target']:.2%}); group ratio {r['group_ratio']:.3f}")
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
