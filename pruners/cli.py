"""The ``depprune`` command line: ``inspect`` a model's groups, ``prune`` it and report."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path

from .errors import DeppruneError, UsageError, first_line

EXIT_USAGE = 2  # bad input: one line on stderr, nothing written
EXIT_INTERNAL = 1  # a bug: "internal error, please report"
LINE_LIMIT = 400  # characters of an error message shown without --debug


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --mod is not silently --model
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, not usage + message
        raise UsageError(message)


def build_parser() -> Parser:
    from .importance import AGGREGATIONS, ESTIMATORS

    p = Parser(prog="depprune", description="Structured pruning of causal language models.")
    p.add_argument("--debug", action="store_true", help="show the traceback behind an error message")
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback behind an error message")
    common.add_argument(
        "--trust-remote-code", action="store_true", default=False,
        help="allow running Python code shipped in a model directory (auto_map / custom model_type); never by default",
    )
    nonfinite = Parser(add_help=False)
    nonfinite.add_argument(
        "--allow-nonfinite", action="store_true", default=None,
        help="go on when weights, scores or logits hold NaN/Inf (default: refuse with an error)",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    i = sub.add_parser("inspect", parents=[common], help="list the prunable groups of a model by kind and layer")
    i.add_argument("--model", required=True, help="model directory (config.json alone is enough: traced on meta)")
    i.add_argument("--json", action="store_true", help="print one JSON object")

    ev = sub.add_parser("eval", parents=[common, nonfinite], help="perplexity, zero-shot accuracy and speed of one or more models, side by side")
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
        "prune", parents=[common, nonfinite], help="prune a model, save it and print a before/after report",
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
    "tokenizer": ("tokenizer",), "seed": ("seed",), "allow_nonfinite": ("allow_nonfinite",),
}


def run_config(args):
    """The run config: ``--config`` file values, overridden by the flags given on the command line."""
    from pydantic import ValidationError

    from .run_config import RunConfig, read_run_file

    data: dict = {}
    if args.config:
        check_path_argument("--config", args.config)
        try:
            data = read_run_file(args.config)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--config: {e}") from e
    _target_from_command_line(args, data)
    for flag, path in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UsageError(f"{key} {short_repr(node)} in --config must be a mapping, e.g. {{source: calib.txt, samples: 10}}")
        node[path[-1]] = value
    for required in ("model", "out"):
        if data.get(required) is None:
            raise UsageError(f"--{required} is required (on the command line or in --config)")
    if data.get("ratio") is None and data.get("kind_ratios") is None:
        raise UsageError("one of --ratio / --kind-ratio is required (on the command line or in --config)")
    _validate_prune(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        if not err["loc"]:  # a cross-field check, e.g. both ratio and kind_ratios in --config
            raise UsageError(f"{err['msg'].removeprefix('Value error, ')}") from e
        keys = [str(x) for x in err["loc"] if isinstance(x, str)]
        if err["type"] == "extra_forbidden":  # a key the run config does not have
            from .calibration import CalibrationConfig

            fields = CalibrationConfig.model_fields if keys[:1] == ["calibration"] and len(keys) > 1 else RunConfig.model_fields
            raise UsageError(
                f"unknown option {'.'.join(keys)!r} in --config; valid: {', '.join(sorted(fields))}"
            ) from e
        flag = "--" + "-".join(keys).replace("_", "-")
        raise UsageError(f"{flag} {short_repr(err.get('input'))}: {err['msg']}") from e


def short_repr(value) -> str:
    """``repr(value)`` cut short, so a huge (or YAML-alias-bombed) value costs nothing to report.

    >>> short_repr([[1, 2, 3, 4, 5, 6, 7]] * 1000)
    '[[1, 2, 3, 4, ...], [1, 2, 3, 4, ...], [1, 2, 3, 4, ...], [1, 2, 3, 4, ...], ...]'
    """
    import reprlib

    r = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 4, 4, 4, 4
    r.maxstring, r.maxother, r.maxlong = 80, 80, 40
    return r.repr(value)


def _target_from_command_line(args, data: dict) -> None:
    """A target on the command line replaces the ``--config`` file's (``--kind-ratio`` its kinds too)."""
    if args.ratio is not None and args.kind_ratio:
        raise UsageError(
            "give one target, --ratio (a fraction of parameters) or --kind-ratio (of units per kind), not both"
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

    check_path_argument("--model", args.model)
    model = load_model(args.model, weights=False, trust_remote_code=args.trust_remote_code)
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


PATH_KEYS = {"model": "--model", "out": "--out", "tokenizer": "--tokenizer", "eval_text": "--eval-text", "calibration": "--calibration"}
NAME_MAX, PATH_MAX = 255, 4095  # bytes per path component and per path on Linux file systems


def check_path_argument(flag: str, value: object) -> str:
    """``value`` if it can name a file: a string without NUL, valid UTF-8, within Linux's length limits.

    >>> check_path_argument("--out", "out/pruned")
    'out/pruned'
    >>> check_path_argument("--model", 3)
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: --model must be a path (a string), got int 3
    """
    if not isinstance(value, str):
        raise UsageError(f"{flag} must be a path (a string), got {type(value).__name__} {value!r}"[:LINE_LIMIT])
    if "\x00" in value:
        raise UsageError(f"{flag} {value!r} holds a NUL character, which no file name can")
    _check_utf8(flag, value)
    encoded = value.encode("utf-8")
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > NAME_MAX or len(encoded) > PATH_MAX:
        raise UsageError(
            f"{flag} {value[:40]!r}... is too long ({len(encoded)} bytes, longest name {longest}): file systems allow "
            f"{NAME_MAX} bytes per name and {PATH_MAX} per path"
        )
    return value


def _validate_prune(data: dict) -> None:
    """Checks with messages naming the flag; ``data`` is the merged run mapping (hub ids resolved here)."""
    from .checkpoint import check_model_dir, check_weights

    ratio = data.get("ratio")
    if ratio is not None and (not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0):
        raise UsageError(f"--ratio {short_repr(ratio)} is outside (0, 1): it is the fraction of parameters to remove")
    kind_ratios = data.get("kind_ratios")
    if kind_ratios is not None and (not isinstance(kind_ratios, dict) or not kind_ratios):
        raise UsageError(f"kind_ratios {short_repr(kind_ratios)} must map kinds to fractions, e.g. {{mlp_channel: 0.5}}")
    try:
        for kind, value in (kind_ratios or {}).items():
            _kind_fraction(kind, value)
    except ValueError as e:
        raise UsageError(f"--kind-ratio {e}") from e
    from .importance import AGGREGATIONS, ESTIMATORS

    importance = data.get("importance", "l2")
    if not isinstance(importance, str) or importance not in ESTIMATORS:
        raise UsageError(f"unknown --importance {short_repr(importance)}; valid: {', '.join(sorted(ESTIMATORS))}")
    aggregation = data.get("aggregation", "sum")
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise UsageError(f"unknown --aggregation {short_repr(aggregation)}; valid: {', '.join(sorted(AGGREGATIONS))}")
    calibration = data.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise UsageError(f"calibration {short_repr(calibration)} must be a mapping, e.g. {{source: calib.txt, samples: 10, seq_len: 128}}")
    for key, flag in PATH_KEYS.items():
        value = (calibration or {}).get("source") if key == "calibration" else data.get(key)
        if value is not None:
            check_path_argument(flag, value)
    src = check_model_dir(data["model"])
    data["model"] = str(src)  # a hub id is now its local snapshot
    if not check_weights(src):  # refuses pickles and corrupt files; empty: config only
        raise UsageError(f"{data['model']!r} has a config but no weights to prune")
    from .importance import make_estimator, needs_of

    needs = needs_of(make_estimator(importance))
    source = (data.get("calibration") or {}).get("source")
    if needs and not source:
        raise UsageError(
            f"--importance {importance} reads {', '.join(sorted(needs))} from calibration data; pass --calibration FILE"
        )


def _check_input_files(cfg) -> None:
    """Read and validate every input file of a run before any model is loaded (one-line errors)."""
    from .calibration import check_calibration_file
    from .eval.perplexity import check_text_file

    if cfg.calibration.source:
        check_calibration_file(cfg.calibration.source)
    if cfg.eval_text:
        check_text_file(cfg.eval_text)


def _prune(args) -> dict:
    """Check everything, reserve OUT, then load, prune, evaluate and write OUT in one swap."""
    from .output_dir import OutputDir

    cfg = run_config(args)
    _check_input_files(cfg)
    inputs = [cfg.model, cfg.tokenizer, cfg.calibration.source, cfg.eval_text, args.config]
    out = OutputDir(cfg.out, force=cfg.force, inputs=inputs, warn=_warn)
    try:
        return _prune_into(out, cfg, args)
    except KeyboardInterrupt as e:
        e.replaced = out.written and cfg.out  # the swap was done: OUT is the new, complete model
        raise


def _prune_into(out, cfg, args) -> dict:
    """Inside the reserved OUT: load, prune, evaluate, write; return the report."""
    from .checkpoint import load_model, load_tokenizer, write_pruned
    from .importance import make_estimator, needs_of
    from .pipeline import analyze, check_context, check_feasible, count_params, prune, run_samples

    trust = args.trust_remote_code
    with out:
        skeleton = load_model(cfg.model, weights=False, trust_remote_code=trust)  # structure only, on meta
        needs_data = bool(needs_of(make_estimator(cfg.importance)))
        if needs_data:
            check_context(cfg, skeleton)
        vocab = skeleton.get_input_embeddings().num_embeddings
        tokenizer = None
        if needs_data or cfg.eval_text:
            tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, trust_remote_code=trust, vocab_size=vocab)
        samples = run_samples(cfg, tokenizer) if needs_data else None  # too few tokens fails here, before any weight
        analysis = analyze(skeleton)
        check_feasible(analysis[1], cfg, count_params(skeleton))  # plan errors before loading weights
        model = load_model(cfg.model, trust_remote_code=trust, allow_nonfinite=cfg.allow_nonfinite)
        result = prune(model, cfg, progress=not args.quiet, analysis=analysis, samples=samples)
        report = _prune_report(cfg, result)
        if cfg.eval_text:
            from .eval.perplexity import perplexity

            report["eval_text"] = cfg.eval_text
            for key, m in (("ppl_before", model), ("ppl_after", result.model)):
                report[key] = perplexity(m, tokenizer, cfg.eval_text, progress=not args.quiet)
            _check_finite_metrics(report, ("ppl_before", "ppl_after"), cfg.allow_nonfinite)
        # NaN/Inf (only with --allow-nonfinite) as strings: config.json stays standard JSON
        run = {"config": cfg.model_dump(mode="json", exclude={"force"}), "report": strict_json(report)}
        out.write(lambda tmp: write_pruned(result.model, tmp, result.record, source=cfg.tokenizer or cfg.model, run=run))
    return report


def _prune_report(cfg, result) -> dict:
    return {
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


def _check_finite_metrics(report: dict, keys, allow: bool, model: str | None = None) -> None:
    """A NaN/Inf metric is refused (the model would be unusable) unless ``--allow-nonfinite``."""
    from .errors import NonFiniteError

    bad = [k for k in keys if not math.isfinite(report[k])]
    if bad and not allow:
        whose = f"{model}: " if model else ""
        raise NonFiniteError(
            f"{whose}{', '.join(f'{k} is {report[k]}' for k in bad)}: the model computes NaN/Inf; "
            "pass --allow-nonfinite to report (and save) it anyway"
        )


def strict_json(value):
    """``value`` with every NaN/Inf float replaced by its name, so that ``json.dumps`` writes standard JSON.

    >>> strict_json({"ppl": float("nan"), "runs": [1.5, float("inf")]})
    {'ppl': 'nan', 'runs': [1.5, 'inf']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _eval(args) -> dict:
    """Every file and number checked first, then each model loaded and evaluated in turn."""
    from .checkpoint import check_model_dir, check_weights, load_model, load_tokenizer
    from .eval import check_limit, check_text_file, generation_speed, perplexity, read_openbookqa, read_piqa, zero_shot
    from .pipeline import count_params

    if not (args.ppl or args.piqa or args.openbookqa or args.speed or args.lm_eval_tasks):
        raise UsageError("nothing to evaluate; pass --ppl, --piqa, --openbookqa, --speed or --lm-eval-tasks")
    for flag, values in (("--model", args.model), ("--tokenizer", [args.tokenizer]), ("--ppl", args.ppl),
                         ("--piqa", [args.piqa]), ("--openbookqa", [args.openbookqa])):
        for value in values:
            if value is not None:
                check_path_argument(flag, value)
    for f in args.ppl:
        check_text_file(f, seq_len=args.seq_len, max_tokens=args.max_tokens)
    check_limit(args.limit)
    lm_eval_tasks = [t.strip() for t in (args.lm_eval_tasks or "").split(",") if t.strip()]
    if args.lm_eval_tasks is not None and not lm_eval_tasks:
        raise UsageError(f"--lm-eval-tasks {args.lm_eval_tasks!r} names no task; e.g. --lm-eval-tasks piqa,arc_easy")
    tasks = {}
    if args.piqa:
        tasks["piqa"] = read_piqa(args.piqa)
    if args.openbookqa:
        tasks["openbookqa"] = read_openbookqa(args.openbookqa)
    for path in args.model:  # every directory checked before the first is evaluated
        if not check_weights(check_model_dir(path)):
            raise UsageError(f"{path!r} has a config but no weights to evaluate")
    trust = args.trust_remote_code
    results = {}
    for path in args.model:
        model = load_model(path, trust_remote_code=trust, allow_nonfinite=bool(args.allow_nonfinite))
        tok = load_tokenizer(args.tokenizer or path, trust_remote_code=trust,
                             vocab_size=model.get_input_embeddings().num_embeddings)
        r: dict = {"params": count_params(model)}
        for f in args.ppl:
            key = f"ppl:{Path(f).name}@{args.seq_len}"
            r[key] = perplexity(model, tok, f, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=not args.quiet)
            _check_finite_metrics(r, [key], bool(args.allow_nonfinite), model=path)
        for name, items in tasks.items():
            scores = zero_shot(model, tok, items, limit=args.limit, progress=not args.quiet)
            r[f"{name}:acc"], r[f"{name}:acc_norm"] = scores["acc"], scores["acc_norm"]
        if args.speed:
            sp = generation_speed(model)
            r["tokens_per_s"], r["param_bytes"], r["peak_bytes"] = sp["tokens_per_s"], sp["param_bytes"], sp["peak_bytes"]
        if lm_eval_tasks:
            from .eval.lm_eval_adapter import run_lm_eval

            try:
                for task, metrics in run_lm_eval(model, tok, lm_eval_tasks, args.limit).items():
                    r.update({f"{task}:{k}": v for k, v in metrics.items()})
            except ImportError as e:
                raise UsageError(str(e)) from e
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


COMMANDS = {"inspect": (_inspect, _print_inspect), "eval": (_eval, _print_eval), "prune": (_prune, _print_prune)}


def main(argv: list[str] | None = None) -> int:
    """Run one command; the one place where errors become messages and exit codes.

    A :class:`~pruners.errors.DeppruneError` (and depgraph's tracing errors) is bad input: its
    first line on stderr, exit code 2.  Any other exception is a bug: "internal error, please
    report", exit code 1, the traceback only with ``--debug``.  SIGINT and SIGTERM end the run
    as an interrupt (exit 130 / 143) after the output directory has been cleaned up.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    for stream in ("stdout", "stderr"):  # started with a closed stream (`>&-`): nothing to print to
        if getattr(sys, stream) is None:
            setattr(sys, stream, open(os.devnull, "w"))  # noqa: SIM115  (lives as long as the process)
    command = next((a for a in argv if a in COMMANDS), None)
    where = f"depprune {command}" if command else "depprune"
    try:
        with _signals_as_interrupts():
            _check_text_arguments(argv)
            _quiet_libraries()
            from .importance import load_plugins

            load_plugins()  # estimators from installed packages show up in --help and --importance
            args = build_parser().parse_args([a for a in argv if a != "--debug"])
            run, show = COMMANDS[args.command]
            report = run(args)
            try:
                print(json.dumps(strict_json(report), allow_nan=False)) if args.json else show(report)
                sys.stdout.flush()  # a closed pipe shows here, inside the try
            except BrokenPipeError:
                raise
            except OSError as e:  # a full disk, /dev/full: the work itself is done
                raise UsageError(f"cannot write the report to standard output ({e.strerror or e})") from e
    except BrokenPipeError:  # e.g. `depprune inspect | head -1`: the reader has what it wanted
        _discard_stdout()
        return 0
    except DeppruneError as e:
        _report(f"{where}: {one_line(e)}", debug)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        replaced = getattr(e, "replaced", None)
        what = f"{replaced!r} was already replaced by the new, complete model" if replaced else "no output was written or replaced"
        _report(f"{where}: interrupted by {signal.Signals(signum).name}; {what}", debug)
        return 128 + signum

    except Exception as e:  # noqa: BLE001  (the one place that turns a crash into a report)
        if _is_trace_error(e):  # depgraph cannot trace this model: bad input, not a bug
            _report(f"{where}: {one_line(e)}", debug)
            return EXIT_USAGE
        _report(
            f"{where}: internal error, please report it ({type(e).__name__}: {one_line(e)}); "
            "rerun with --debug for the traceback", debug
        )
        return EXIT_INTERNAL
    return 0


def _is_trace_error(e: BaseException) -> bool:
    """depgraph's tracing errors (imported lazily, so that ``main`` starts before torch does)."""
    tracer = sys.modules.get("depgraph.tracer")
    return tracer is not None and isinstance(e, (tracer.TraceError, tracer.UnsupportedOpError))


def one_line(e: BaseException) -> str:
    """The first line of ``e``'s message, at most :data:`LINE_LIMIT` characters.

    >>> one_line(ValueError("first\\nsecond"))
    'first (more with --debug)'
    """
    line = first_line(e) or type(e).__name__
    text = line if len(line) <= LINE_LIMIT else line[: LINE_LIMIT - 1] + "…"
    return text + (" (more with --debug)" if text != str(e).strip() else "")


def _report(message: str, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)


def _check_text_arguments(argv: list[str]) -> None:
    """Refuse arguments that are not valid UTF-8 (paths with undecodable bytes) before anything uses them."""
    for a in argv:
        _check_utf8("argument", a)


def _check_utf8(label: str, value: str) -> None:
    """Refuse a string holding undecodable bytes (Python keeps them as lone surrogates), shown escaped."""
    from .text_input import is_text

    if not is_text(value):
        shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise UsageError(f"{label} {shown!r} is not valid UTF-8; rename the file or directory")


def _quiet_libraries() -> None:
    """depprune reports problems itself: no transformers warnings on stderr, no prompts on stdin."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # depprune's own progress bars say what is happening


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C, so every ``finally`` and cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _signals_as_interrupts:
    """Within the block, SIGINT and SIGTERM raise :class:`_Interrupted` (only in the main thread)."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Interrupted(signum)

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


def _discard_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
