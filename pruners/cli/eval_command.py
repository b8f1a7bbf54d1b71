"""``depprune eval``: perplexity, zero-shot accuracy and speed of one or more models, side by side."""

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
)
from .registry import Command


def add_arguments(ev: argparse.ArgumentParser) -> None:
    add_common_options(ev)
    add_nonfinite_option(ev)
    add_device_options(ev)
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


def run(args) -> dict:
    """Every file and number checked first, then each model loaded and evaluated in turn."""
    from ..eval import check_limit, check_text_file, read_openbookqa, read_piqa, speed_in_own_process
    from ..io.checkpoint import check_model_dir, check_weights

    if not (args.ppl or args.piqa or args.openbookqa or args.speed or args.lm_eval_tasks):
        raise UsageError("nothing to evaluate; pass --ppl, --piqa, --openbookqa, --speed or --lm-eval-tasks")
    for flag, values in (("--model", args.model), ("--tokenizer", [args.tokenizer]), ("--ppl", args.ppl),
                         ("--piqa", [args.piqa]), ("--openbookqa", [args.openbookqa])):
        for value in values:
            if value is not None:
                check_path_argument(flag, value)
    for f in args.ppl:
        check_text_file(f, seq_len=args.seq_len, max_tokens=args.max_tokens)
    device = check_device_options(args.device, args.dtype)
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
    scored = bool(args.ppl or tasks or lm_eval_tasks)  # what needs the model here, and its tokenizer
    results = {}
    for path in args.model:
        r: dict = {}
        if scored:
            r.update(score_model(args, path, device, tasks, lm_eval_tasks))
        if args.speed:  # in a process of its own: its peak memory is this model's, not every model's so far
            sp = speed_in_own_process(path, device, args.dtype, trust_remote_code=trust,
                                      allow_nonfinite=bool(args.allow_nonfinite))
            r.setdefault("params", sp["params"])
            r["tokens_per_s"], r["param_bytes"], r["peak_bytes"] = sp["tokens_per_s"], sp["param_bytes"], sp["peak_bytes"]
        results[path] = r
    return {"models": results}


def score_model(args, path: str, device, tasks: dict, lm_eval_tasks: list[str]) -> dict:
    """Perplexity and zero-shot scores of the model at ``path`` (loaded here, freed on return)."""
    from ..eval import perplexity, zero_shot
    from ..io.checkpoint import load_model, load_tokenizer
    from ..pipeline import count_params

    trust = args.trust_remote_code
    model = load_model(path, device, dtype=args.dtype, trust_remote_code=trust, allow_nonfinite=bool(args.allow_nonfinite))
    tok = load_tokenizer(args.tokenizer or path, trust_remote_code=trust, vocab_size=model.get_input_embeddings().num_embeddings)
    r: dict = {"params": count_params(model)}
    for f in args.ppl:
        key = f"ppl:{Path(f).name}@{args.seq_len}"
        r[key] = perplexity(model, tok, f, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=not args.quiet)
        check_finite_metrics(r, [key], bool(args.allow_nonfinite), model=path)
    for name, items in tasks.items():
        scores = zero_shot(model, tok, items, limit=args.limit, progress=not args.quiet)
        r[f"{name}:acc"], r[f"{name}:acc_norm"] = scores["acc"], scores["acc_norm"]
    if lm_eval_tasks:
        from ..eval.lm_eval_adapter import run_lm_eval

        try:
            for task, metrics in run_lm_eval(model, tok, lm_eval_tasks, args.limit).items():
                r.update({f"{task}:{k}": v for k, v in metrics.items()})
        except ImportError as e:
            raise UsageError(str(e)) from e
    return r


def show(report: dict) -> None:
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


COMMAND = Command(
    "eval", "perplexity, zero-shot accuracy and speed of one or more models, side by side", add_arguments, run, show
)
