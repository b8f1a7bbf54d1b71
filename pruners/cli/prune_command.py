"""``depprune prune``: prune a model, save it and print a before/after report.

Options come from the command line and, with ``--config``, from a YAML or JSON run file
(:class:`pruners.config.RunConfig`); flags given on the command line override the file.
Everything is checked before the first weight is read; OUT is written beside itself and
swapped in whole (:class:`pruners.io.output_dir.OutputDir`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .arguments import (
    add_common_options,
    add_device_options,
    add_nonfinite_option,
    check_device_options,
    check_finite_metrics,
    check_path_argument,
    read_config_option,
    set_flags,
    short_repr,
    strict_json,
    warn,
)
from .registry import Command

DESCRIPTION = (
    "Options may come from --config (YAML/JSON, see pruners.config); flags given here override it. "
    "The target is --ratio (a fraction of parameters) or --kind-ratio (a fraction of units per kind), not both."
)


def add_arguments(pr: argparse.ArgumentParser) -> None:
    from ..importance import AGGREGATIONS, ESTIMATORS
    from ..methods import METHODS

    add_common_options(pr)
    add_nonfinite_option(pr)
    add_device_options(pr)
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
    pr.add_argument(
        "--method", help=f"pruning method: {', '.join(sorted(METHODS))} (default one-shot; "
        "installed packages add more through the depprune.methods entry points)",
    )
    pr.add_argument("--importance", help=f"importance estimator: {', '.join(sorted(ESTIMATORS))} (default l2)")
    pr.add_argument(
        "--importance-option", action="append", metavar="KEY=VALUE",
        help="an option of the importance estimator, e.g. power=2.5 (repeatable); the value is read as the option's "
        "type, [..] and {..} as JSON; overrides the run file's importance_options key by key",
    )
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
    pr.add_argument(
        "--rounds", type=int,
        help="prune in N rounds, re-scoring the pruned model between them (default 1); each round keeps the same "
        "fraction of the parameters, together --ratio",
    )
    pr.add_argument("--min-units", type=int, help="units every group keeps at least (default 1)")
    pr.add_argument("--round-to", type=int, help="round kept units per group to a multiple of this (default 1)")
    pr.add_argument(
        "--align", type=int, metavar="N",
        help="aligned output: every layer the same shape, MLP/hidden channels a multiple of N, head counts the "
        "config accepts, so it loads without remote code on any engine (refused when the config cannot say it)",
    )
    pr.add_argument("--calibration", help="text or Alpaca .json/.jsonl file for gradient/activation estimators")
    pr.add_argument("--calibration-samples", type=int, help="calibration sequences (default 10)")
    pr.add_argument("--calibration-seq-len", type=int, help="tokens per calibration sequence (default 128)")
    pr.add_argument(
        "--calibration-activation-memory", metavar="X",
        help="memory taylor-element/-vector may keep calibration activations in, as a multiple of the weight bytes: "
        "the decoder layers that fit are not run forward twice (0: least memory; default auto: up to the pruned "
        "model's size, so the prune's peak is not raised)",
    )
    pr.add_argument("--out", help="output directory (must be empty or absent unless --force)")
    pr.add_argument("--force", action="store_true", default=None, help="overwrite a non-empty --out")
    pr.add_argument("--eval-text", help="text file for perplexity before and after")
    pr.add_argument(
        "--recover", metavar="FILE",
        help="then fine-tune the pruned model on FILE (text or Alpaca .json/.jsonl) with `depprune recover`'s recipe "
        "before saving it; its options go under recover: in --config",
    )
    pr.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    pr.add_argument("--seed", type=int, help="seed for random importance and calibration sampling (default 0)")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    for method in METHODS.values():
        if method.flags:
            group = pr.add_argument_group(f"options of --method {method.name} (its method_options in --config)")
            for f in method.flags:
                group.add_argument(f.flag, dest=_flag_dest(f.flag), help=f.help, **dict(f.kwargs))


def _flag_dest(flag: str) -> str:
    """The argparse destination of a method's flag (apart from the command's own)."""
    return "method_flag_" + flag.lstrip("-").replace("-", "_")


def _method_flags_from_command_line(args, data: dict) -> None:
    """Each method flag given is written into ``method_options``; a flag of another method than the run's is refused."""
    from ..methods import METHODS

    method = data.get("method", "one-shot")
    for spec in METHODS.values():
        given = [f for f in spec.flags if getattr(args, _flag_dest(f.flag), None) is not None]
        if given and spec.name != method:
            raise UsageError(f"{given[0].flag} is an option of --method {spec.name}, not of {short_repr(method)}")
        if given:
            options = data.setdefault("method_options", {})
            if not isinstance(options, dict):
                raise UsageError(f"method_options {short_repr(options)} in --config must be a mapping of the method's options")
            set_flags(args, options, {_flag_dest(f.flag): f.path for f in given})


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
    from ..config import KIND_NAMES

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
    "method": ("method",), "model": ("model",), "ratio": ("ratio",), "kind_ratio": ("kind_ratios",), "importance": ("importance",),
    "aggregation": ("aggregation",), "kinds": ("kinds",), "strategy": ("strategy",), "layers": ("layers",), "min_units": ("min_units",),
    "round_to": ("round_to",), "align": ("align",), "calibration": ("calibration", "source"), "calibration_samples": ("calibration", "samples"),
    "calibration_seq_len": ("calibration", "seq_len"), "calibration_activation_memory": ("calibration", "activation_memory"), "out": ("out",), "force": ("force",), "eval_text": ("eval_text",),
    "tokenizer": ("tokenizer",), "seed": ("seed",), "rounds": ("rounds",), "allow_nonfinite": ("allow_nonfinite",), "device": ("device",),
    "dtype": ("dtype",), "recover": ("recover", "data", "source"),
}


def run_config(args):
    """The run config: ``--config`` file values, overridden by the flags given on the command line."""
    from pydantic import ValidationError

    from ..config import RunConfig

    data = read_config_option(args)
    _target_from_command_line(args, data)
    _options_from_command_line(args, data)
    set_flags(args, data, FLAG_KEYS)
    _method_flags_from_command_line(args, data)
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
            from ..config import CalibrationConfig

            fields = CalibrationConfig.model_fields if keys[:1] == ["calibration"] and len(keys) > 1 else RunConfig.model_fields
            raise UsageError(
                f"unknown option {'.'.join(keys)!r} in --config; valid: {', '.join(sorted(fields))}"
            ) from e
        flag = "--" + "-".join(keys).replace("_", "-")
        raise UsageError(f"{flag} {short_repr(err.get('input'))}: {err['msg'].removeprefix('Value error, ')}") from e


def _options_from_command_line(args, data: dict) -> None:
    """``--importance-option KEY=VALUE`` overrides the file's ``importance_options`` key by key.

    A file's options belong to the file's estimator: when ``--importance`` names another one and
    no option is given, they are dropped rather than checked against an estimator they were not
    written for.
    """
    from ..importance import parse_options

    options = data.get("importance_options")
    if args.importance is not None and args.importance != data.get("importance", "l2") and not args.importance_option:
        data.pop("importance_options", None)
        return
    if args.importance_option:
        if options is not None and not isinstance(options, dict):
            raise UsageError(f"importance_options {short_repr(options)} in --config must be a mapping, e.g. {{power: 2.5}}")
        data["importance_options"] = {**(options or {}), **parse_options(args.importance_option)}


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


PATH_KEYS = {"model": "--model", "out": "--out", "tokenizer": "--tokenizer", "eval_text": "--eval-text", "calibration": "--calibration"}


def _validate_prune(data: dict) -> None:
    """Checks with messages naming the flag; ``data`` is the merged run mapping (hub ids resolved here)."""
    from ..io.checkpoint import check_model_dir, check_weights

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
    from ..importance import AGGREGATIONS, ESTIMATORS

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
    from ..importance import make_estimator, needs_of, validate_options

    options = data.get("importance_options") or {}
    if not isinstance(options, dict):
        raise UsageError(f"importance_options {short_repr(options)} must be a mapping of the estimator's options, e.g. {{power: 2.5}}")
    needs = needs_of(make_estimator(importance, **validate_options(importance, options)))
    source = (data.get("calibration") or {}).get("source")
    if needs and not source:
        raise UsageError(
            f"--importance {importance} reads {', '.join(sorted(needs))} from calibration data; pass --calibration FILE"
        )


def _check_input_files(cfg) -> None:
    """Read and validate every input file of a run before any model is loaded (one-line errors)."""
    from ..eval.perplexity import check_text_file
    from ..importance.calibration import check_calibration_file

    if cfg.calibration.source:
        check_calibration_file(cfg.calibration.source)
    if cfg.eval_text:
        check_text_file(cfg.eval_text)


def recovery_stage(cfg, trust_remote_code: bool):
    """The ``recover`` command's :class:`~pruners.cli.registry.Stage` and its checked config, or ``(None, None)``.

    Found through the command registry (the recovery package registers ``depprune recover``),
    so pruning never imports it.
    """
    if cfg.recover is None:
        return None, None
    from .registry import load_commands

    command = load_commands().get("recover")
    if command is None or command.stage is None:
        raise UsageError("--recover needs the `depprune recover` command, which is not installed (pip install -e .)")
    return command.stage, command.stage.check(
        cfg.recover, cfg.model, allow_nonfinite=cfg.allow_nonfinite, trust_remote_code=trust_remote_code
    )


def run(args) -> dict:
    """Check everything, reserve OUT, then load, prune, (recover,) evaluate and write OUT in one swap."""
    from ..io.output_dir import OutputDir
    from ..methods import METHODS

    cfg = run_config(args)
    device = check_device_options(cfg.device, cfg.dtype)  # e.g. --device cuda without CUDA: before anything is read
    _check_input_files(cfg)
    method = METHODS[cfg.method]
    if method.check is not None:
        method.check(cfg)  # run options the method cannot honour, its input files: before any model is loaded
    stage = recovery_stage(cfg, args.trust_remote_code)  # its options and data file: checked before any model is loaded
    inputs = [cfg.model, cfg.tokenizer, cfg.calibration.source, cfg.eval_text, args.config]
    inputs += stage[0].inputs(stage[1]) if stage[0] else []
    inputs += method.inputs(cfg) if method.inputs else []
    out = OutputDir(cfg.out, force=cfg.force, inputs=inputs, warn=warn)
    try:
        return _prune_into(out, cfg, args, device, stage)
    except KeyboardInterrupt as e:
        e.replaced = out.written and cfg.out  # the swap was done: OUT is the new, complete model
        raise


def _prune_into(out, cfg, args, device, stage=(None, None)) -> dict:
    """Inside the reserved OUT: load, prune, evaluate, write; return the report."""
    from ..importance import make_estimator, needs_of
    from ..io.checkpoint import load_model, load_tokenizer, write_pruned
    from ..methods import METHODS
    from ..pipeline import analyze, check_context, check_feasible, count_params, run_samples

    trust = args.trust_remote_code
    with out:
        skeleton = load_model(cfg.model, weights=False, dtype=cfg.dtype, trust_remote_code=trust)  # structure only, on meta
        needs_data = bool(needs_of(make_estimator(cfg.importance, **cfg.importance_options)))
        if needs_data:
            check_context(cfg, skeleton)
        vocab = skeleton.get_input_embeddings().num_embeddings
        tokenizer = None
        recovery, recovery_config = stage
        method = METHODS[cfg.method]
        if needs_data or cfg.eval_text or recovery or method.needs_tokenizer or method.prepare:
            tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, trust_remote_code=trust, vocab_size=vocab)
        samples = run_samples(cfg, tokenizer) if needs_data else None  # too few tokens fails here, before any weight
        extra = {"prepared": method.prepare(cfg, tokenizer)} if method.prepare else {}  # e.g. tokenised training data
        prepared = recovery.prepare(recovery_config, tokenizer) if recovery else None  # tokenised training data
        analysis = analyze(skeleton)
        check_feasible(analysis[1], cfg, count_params(skeleton))  # plan errors before loading weights
        model = load_model(
            cfg.model, device, dtype=cfg.dtype, trust_remote_code=trust, allow_nonfinite=cfg.allow_nonfinite
        )
        result = method.run(
            model, cfg, progress=not args.quiet, analysis=analysis, tokenizer=tokenizer, samples=samples, **extra
        )
        report = _prune_report(cfg, result, device)
        from ..eval.perplexity import perplexity

        if cfg.eval_text:
            report["eval_text"] = cfg.eval_text
            for key, m in (("ppl_before", model), ("ppl_after", result.model)):
                report[key] = perplexity(m, tokenizer, cfg.eval_text, progress=not args.quiet)
            check_finite_metrics(report, ("ppl_before", "ppl_after"), cfg.allow_nonfinite)
        final, write_files, stages = result.model, None, []
        if recovery:
            final, record, write_files = recovery.apply(recovery_config, prepared, result.model, model, tokenizer, not args.quiet)
            stages.append(record)
            report["recovery"] = record.get("report", {})
            if cfg.eval_text:
                report["ppl_recovered"] = perplexity(final, tokenizer, cfg.eval_text, progress=not args.quiet)
                check_finite_metrics(report, ("ppl_recovered",), cfg.allow_nonfinite)
        # NaN/Inf (only with --allow-nonfinite) as strings: config.json stays standard JSON
        run = {"config": cfg.model_dump(mode="json", exclude={"force"}), "report": strict_json(report)}
        if stages:
            run["recovery"] = strict_json(stages)

        def fill(tmp):
            write_pruned(final, tmp, result.record, source=cfg.tokenizer or cfg.model, run=run)
            if write_files is not None:
                write_files(tmp)

        out.write(fill)
    return report


def _prune_report(cfg, result, device) -> dict:
    from ..io.checkpoint import weights_dtype
    from ..io.device import dtype_name

    return {
        "model": cfg.model,
        "out": cfg.out,
        "method": cfg.method,
        "rounds": cfg.rounds,
        "importance": cfg.importance,
        "importance_options": cfg.importance_options,
        "aggregation": cfg.aggregation,
        "kinds": list(cfg.kinds),
        "strategy": cfg.strategy,
        "layers": list(cfg.layers) if cfg.layers else None,
        "ratio_target": cfg.ratio,
        "kind_ratios": cfg.kind_ratios,
        "calibration": str(cfg.calibration.source) if cfg.calibration.source else None,
        "device": str(device),
        "dtype": dtype_name(weights_dtype(result.model)),
        "params_before": result.params_before,
        "params_after": result.params_after,
        "ratio_achieved": round(result.achieved_ratio, 6),
        "group_ratio": round(result.plan.group_ratio, 6),
        "removed": result.plan.by_kind,
        **({"method_report": result.report} if result.report else {}),
    }


def show(r: dict) -> None:
    how = f"importance {r['importance']}, aggregation {r['aggregation']}" if r["method"] == "one-shot" else f"method {r['method']}"
    print(f"pruned {r['model']} -> {r['out']}  ({how}, kinds {' '.join(r['kinds'])}; {r['dtype']} on {r['device']})")
    for line in r.get("method_report", {}).get("summary", []):
        print(line)
    print(f"{'':<14}{'before':>14}{'after':>14}")
    print(f"{'parameters':<14}{r['params_before']:>14,}{r['params_after']:>14,}")
    if "ppl_before" in r:
        print(f"{'perplexity':<14}{r['ppl_before']:>14.3f}{r['ppl_after']:>14.3f}   ({Path(r['eval_text']).name})")
    if "recovery" in r:
        rec = r["recovery"]
        ppl = f"perplexity {r['ppl_recovered']:.3f}, " if "ppl_recovered" in r else ""
        print(f"recovered ({rec['method']}, {rec['steps']} steps, {rec['seconds']:.0f} s): {ppl}"
              f"validation loss {rec['validation_loss_start']:.3f} -> {rec['validation_loss']:.3f}")
    if r.get("ratio_target") is not None:
        target = f"target {r['ratio_target']:.2%}"
    else:
        target = "kind ratios " + ", ".join(f"{k}={v:g}" for k, v in r["kind_ratios"].items())
    print(f"removed {r['ratio_achieved']:.2%} of parameters ({target}); group ratio {r['group_ratio']:.3f}")
    for kind, s in r["removed"].items():
        print(f"  {kind:<16} {s['removed_units']:>6} of {s['units']:>6} units  ({s['removed_params']:,} params)")


COMMAND = Command(
    "prune", "prune a model, save it and print a before/after report", add_arguments, run, show, DESCRIPTION
)
