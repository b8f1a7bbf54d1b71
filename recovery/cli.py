"""``depprune recover``: fine-tune a pruned model, merge, save it, and print a before/after report.

The command registers itself with depprune's CLI through the ``depprune.commands`` entry point
(``pyproject.toml``); the same work is the :class:`RecoverStage` that ``depprune prune
--recover FILE`` chains after pruning, found on this command, so pruning never imports recovery.

Everything is checked before the first weight is read: the options, the data file (read,
validated and tokenised), the teacher's vocabulary, OUT and the checkpoints of an interrupted
run.  OUT is written beside itself and swapped in whole; checkpoints (``--save-every``) live
beside it until the run ends, for ``--resume``.
"""

from __future__ import annotations

import argparse
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from pruners.cli.arguments import (
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
from pruners.cli.registry import Command
from pruners.errors import UsageError

DESCRIPTION = (
    "Fine-tune a pruned model (LoRA merged back, distillation from the unpruned model, or all weights) and save it "
    "as a plain dense model. Options may come from --config (YAML/JSON, see recovery.config); flags override it."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_options(p)
    add_nonfinite_option(p)
    add_device_options(p)
    p.add_argument("--config", help="YAML or JSON run file (recovery.config.RecoverRunConfig); flags override it")
    p.add_argument("--model", help="the pruned model directory (written by depprune prune)")
    p.add_argument("--data", help="training data: Alpaca .json/.jsonl records, or a plain text file")
    p.add_argument("--out", help="output directory (must be empty or absent unless --force)")
    p.add_argument("--method", help="lora (default: LoRA, merged), kd (distillation from --teacher) or full (all weights)")
    p.add_argument("--teacher", help="kd: the unpruned model (default: the source recorded in the pruned model)")
    p.add_argument("--max-steps", type=int, help="optimiser steps (default 300)")
    p.add_argument("--epochs", type=float, help="instead of --max-steps: passes over the training split")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    p.add_argument("--batch-size", type=int, help="sequences per forward pass (default 16)")
    p.add_argument("--grad-accum", type=int, help="forward passes per optimiser step (default 1)")
    p.add_argument("--seq-len", type=int, help="tokens per training sequence (default 256)")
    p.add_argument("--validation", type=float, help="held-out sequences: a fraction in (0, 1) or a count (default 0.05)")
    p.add_argument("--eval-every", type=int, help="validation loss every N steps (default 50)")
    p.add_argument("--save-every", type=int, help="write a resumable checkpoint every N steps")
    p.add_argument("--resume", action="store_true", default=None, help="continue the interrupted run writing --out")
    p.add_argument("--seed", type=int, help="seed of adapter init, dropout and data order (default 0)")
    p.add_argument("--train-on-prompt", action="store_true", default=None, help="Alpaca: loss on the prompt tokens too")
    p.add_argument("--keep-adapter", action="store_true", default=None, help="also save the LoRA adapter in OUT/adapter")
    p.add_argument("--eval-text", help="text file for perplexity before and after recovery")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    p.add_argument("--force", action="store_true", default=None,
                   help="replace an output directory depprune wrote; start over instead of resuming")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# command-line flag -> path in the run config
FLAG_KEYS = {
    "model": ("model",), "out": ("out",), "data": ("data", "source"), "method": ("method",),
    "teacher": ("distill", "teacher"), "max_steps": ("train", "max_steps"), "epochs": ("train", "epochs"),
    "lr": ("train", "lr"), "batch_size": ("train", "batch_size"), "grad_accum": ("train", "grad_accum"),
    "seq_len": ("data", "seq_len"), "validation": ("data", "validation"), "eval_every": ("train", "eval_every"),
    "save_every": ("train", "save_every"), "resume": ("resume",), "seed": ("train", "seed"),
    "train_on_prompt": ("data", "train_on_prompt"), "keep_adapter": ("keep_adapter",), "eval_text": ("eval_text",),
    "tokenizer": ("tokenizer",), "force": ("force",), "device": ("device",), "dtype": ("dtype",),
    "allow_nonfinite": ("allow_nonfinite",),
}
PATH_KEYS = {("model",): "--model", ("out",): "--out", ("data", "source"): "--data", ("distill", "teacher"): "--teacher",
             ("tokenizer",): "--tokenizer", ("eval_text",): "--eval-text"}


def validated(cls, data: dict, where: str = ""):
    """``cls.model_validate(data)``, a failure as one UsageError naming the option (``--max-steps``, ``recover.train.lr``)."""
    from pydantic import ValidationError

    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        keys = [str(x) for x in err["loc"] if isinstance(x, str)]
        msg = err["msg"].removeprefix("Value error, ")
        if not keys:
            raise UsageError(f"{where}{msg}") from e
        if err["type"] == "extra_forbidden":
            parent = cls.model_fields.get(keys[0]) if len(keys) > 1 else None
            fields = parent.annotation.model_fields if parent is not None and hasattr(parent.annotation, "model_fields") \
                else cls.model_fields
            raise UsageError(f"unknown option {where}{'.'.join(keys)!r}; valid: {', '.join(sorted(fields))}") from e
        name = where + ".".join(keys) if where else "--" + "-".join(keys[-1:]).replace("_", "-")
        raise UsageError(f"{name} {short_repr(err.get('input'))}: {msg}") from e


def run_config(args):
    """The run config: ``--config`` file values, overridden by the flags given on the command line."""
    from .config import RecoverRunConfig

    data = set_flags(args, read_config_option(args), FLAG_KEYS)
    if args.epochs is not None:  # --epochs replaces a step count (the default's or the file's)
        data.setdefault("train", {})["max_steps"] = None
    for required, flag in (("model", "--model"), ("out", "--out")):
        if data.get(required) is None:
            raise UsageError(f"{flag} is required (on the command line or in --config)")
    if not isinstance(data.get("data"), dict) or data["data"].get("source") is None:
        raise UsageError("--data is required (on the command line or as data.source in --config)")
    check_paths(data, PATH_KEYS)
    return validated(RecoverRunConfig, data)


def check_paths(data: dict, keys: dict) -> None:
    for path, flag in keys.items():
        node = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            check_path_argument(flag, node)


def check_context(seq_len: int, model, flag: str) -> None:
    """UsageError when training sequences would be longer than the model's context."""
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx is not None and seq_len > ctx:
        raise UsageError(f"{flag} {seq_len} is longer than the model's context (max_position_embeddings {ctx})")


def teacher_path(cfg) -> str | None:
    """kd's teacher: ``distill.teacher``, else the model the pruned one was made from (its run record)."""
    from pruners import read_run

    if cfg.method != "kd":
        return None
    if cfg.distill.teacher is not None:
        return cfg.distill.teacher
    source = ((read_run(cfg.model) or {}).get("config") or {}).get("model")
    if not isinstance(source, str):
        raise UsageError(
            f"--method kd: {cfg.model!r} records no source model to distil from; pass --teacher DIR (the unpruned model)"
        )
    if not Path(source).exists():
        raise UsageError(
            f"--method kd: the source recorded in {cfg.model!r}, {source!r}, does not exist here; pass --teacher DIR"
        )
    return source


def check_teacher_vocab(student: str, teacher: str, trust: bool) -> None:
    """Refuse a teacher whose vocabulary differs from the student's, from their configs (no weights read)."""
    from pruners import load_model

    s = load_model(student, weights=False, trust_remote_code=trust)
    t = load_model(teacher, weights=False, trust_remote_code=trust)
    vs, vt = s.get_output_embeddings().weight.shape[0], t.get_output_embeddings().weight.shape[0]
    if vs != vt:
        raise UsageError(
            f"--teacher {teacher!r} predicts over {vt} tokens but {student!r} over {vs}: distillation needs the same "
            "vocabulary; give the unpruned model the pruned one was made from"
        )


def run(args) -> dict:
    """Check everything, reserve OUT, then load, fine-tune, merge, evaluate and write OUT in one swap."""
    from pruners import OutputDir, load_model, load_pruned, load_tokenizer, perplexity, read_run, write_pruned

    from . import checkpoints
    from .data import build_data, read_data
    from .recipe import recover

    cfg = run_config(args)
    trust = args.trust_remote_code
    device = check_device_options(cfg.device, cfg.dtype)
    dtype = cfg.dtype or ("bfloat16" if device.type == "cuda" else None)  # bf16 on CUDA, else the checkpoint's
    items = read_data(cfg.data)  # the data file, checked before any model is read
    if cfg.eval_text:
        from pruners import check_text_file

        check_text_file(cfg.eval_text)
    skeleton = load_model(cfg.model, weights=False, trust_remote_code=trust)
    check_context(cfg.data.seq_len, skeleton, "--seq-len")
    teacher = teacher_path(cfg)
    if teacher:
        check_teacher_vocab(cfg.model, teacher, trust)
    ckdir = checkpoints.checkpoint_dir(cfg.out)
    if checkpoints.latest(ckdir) is not None and not cfg.resume and not cfg.force:
        raise UsageError(
            f"{ckdir} holds the checkpoints of an interrupted run writing {cfg.out!r}: pass --resume to continue it, "
            "or --force to start over"
        )
    if cfg.resume and checkpoints.latest(ckdir) is None:
        raise UsageError(f"--resume: there is no checkpoint of an interrupted run in {ckdir}; run without --resume")
    inputs = [cfg.model, cfg.tokenizer, cfg.data.source, teacher, cfg.eval_text, args.config]
    out = OutputDir(cfg.out, force=cfg.force, inputs=inputs, warn=warn)
    with out:
        if not cfg.resume:
            checkpoints.remove(ckdir)  # --force: an interrupted run's checkpoints are discarded
        vocab = skeleton.get_input_embeddings().num_embeddings
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, trust_remote_code=trust, vocab_size=vocab)
        data = build_data(cfg.data, tokenizer, items)  # too little data fails here, before any weight
        model, record = load_pruned(cfg.model, device, dtype=dtype, trust_remote_code=trust,
                                    allow_nonfinite=cfg.allow_nonfinite)
        teacher_model = load_model(teacher, device, dtype=dtype, trust_remote_code=trust) if teacher else None
        report = {"model": cfg.model, "out": cfg.out, "teacher": teacher}
        if cfg.eval_text:
            report["eval_text"] = cfg.eval_text
            report["ppl_before"] = perplexity(model, tokenizer, cfg.eval_text, progress=not args.quiet)
        result = recover(
            model, tokenizer, cfg, teacher=teacher_model, data=data, checkpoint_dir=ckdir, resume=bool(cfg.resume),
            progress=not args.quiet, inplace=True, allow_nonfinite=cfg.allow_nonfinite,
        )
        report.update(stage_report(cfg, result, device))
        if cfg.eval_text:
            report["ppl_after"] = perplexity(result.model, tokenizer, cfg.eval_text, progress=not args.quiet)
            check_finite_metrics(report, ("ppl_before", "ppl_after"), cfg.allow_nonfinite)
        run = read_run(cfg.model) or {}
        run.setdefault("recovery", []).append(strict_json(stage_record(cfg, result, report)))

        def fill(tmp: Path) -> None:
            write_pruned(result.model, tmp, record, source=cfg.tokenizer or cfg.model, run=run)
            write_files(tmp, cfg, result, base=cfg.model)

        out.write(fill)
    checkpoints.remove(ckdir)  # OUT is complete: nothing left to resume
    return report


def stage_report(cfg, result, device) -> dict:
    """The report of one recovery: method, steps, time, validation losses, data, where it ran."""
    from pruners import weights_dtype

    return {
        "method": cfg.method, **result.summary(), "device": str(device),
        "dtype": str(weights_dtype(result.model)).removeprefix("torch."),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def stage_record(cfg, result, report: dict) -> dict:
    """What ``config.json`` keeps of a recovery: its config, report and validation curve."""
    config = cfg.model_dump(mode="json", include=set(_recover_fields()))
    return {"config": config, "report": report, "validation": result.validation}


def _recover_fields():
    from .config import RecoverConfig

    return RecoverConfig.model_fields


def write_files(directory: Path, cfg, result, base: str | None) -> None:
    """The log, the loss curve and (``keep_adapter``) the peft adapter, into the output being filled."""
    from .report import plot_losses, write_log

    config = cfg.model_dump(mode="json", include=set(_recover_fields()))
    write_log(directory, config, result)
    plot_losses(directory, result, f"depprune recover ({cfg.method}) of {Path(base).name if base else 'the pruned model'}")
    if cfg.keep_adapter and result.adapter is not None:
        save_adapter(directory / "adapter", result.adapter, base)


def save_adapter(directory: Path, adapter: dict, base: str | None) -> None:
    """The trained LoRA in peft's format (``adapter_config.json``, ``adapter_model.safetensors``), on the pruned base."""
    from safetensors.torch import save_file

    directory.mkdir()
    config = adapter["config"]
    config.base_model_name_or_path = base
    config.save_pretrained(str(directory))
    save_file({k: v.contiguous().cpu() for k, v in adapter["tensors"].items()}, str(directory / "adapter_model.safetensors"),
              metadata={"format": "pt"})


@dataclass(frozen=True)
class Chained:
    """A recovery chained after pruning: its config and the run's NaN/Inf and model-code policies."""

    config: object  # RecoverConfig
    allow_nonfinite: bool
    trust_remote_code: bool


class RecoverStage:
    """``depprune recover`` as a :class:`~pruners.cli.registry.Stage`: chained by ``depprune prune --recover FILE``."""

    def inputs(self, chained: Chained) -> list[str]:
        return [chained.config.data.source, chained.config.distill.teacher]

    def check(self, options: dict, model: str, *, allow_nonfinite: bool, trust_remote_code: bool) -> Chained:
        from .config import RecoverConfig
        from .data import read_data

        if not isinstance(options, dict):
            raise UsageError(f"recover {short_repr(options)} in --config must be a mapping of recovery options")
        if not isinstance(options.get("data"), dict) or options["data"].get("source") is None:
            raise UsageError("recovery needs data: --recover FILE (or recover.data.source in --config)")
        check_paths(options, {("data", "source"): "--recover", ("distill", "teacher"): "recover.distill.teacher"})
        from pruners import load_model

        config = validated(RecoverConfig, options, "recover.")
        read_data(config.data)
        skeleton = load_model(model, weights=False, trust_remote_code=trust_remote_code)
        check_context(config.data.seq_len, skeleton, "recover.data.seq_len")
        if config.method == "kd" and config.distill.teacher is not None:
            check_teacher_vocab(model, config.distill.teacher, trust=trust_remote_code)
        return Chained(config, allow_nonfinite, trust_remote_code)

    def prepare(self, chained: Chained, tokenizer):
        from .data import build_data

        return build_data(chained.config.data, tokenizer)

    def apply(self, chained: Chained, prepared, model, source_model, tokenizer, progress: bool):
        from pruners import load_model

        from .recipe import check_teacher, recover

        config = chained.config
        teacher = None
        if config.method == "kd":
            if config.distill.teacher is not None:
                device = next(model.parameters()).device
                teacher = load_model(config.distill.teacher, device, dtype=next(model.parameters()).dtype,
                                     trust_remote_code=chained.trust_remote_code)
            else:
                teacher = source_model  # the unpruned model, already in memory
            check_teacher(model, teacher)
        result = recover(model, tokenizer, config, teacher=teacher, data=prepared, progress=progress, inplace=True,
                         allow_nonfinite=chained.allow_nonfinite)
        device = next(result.model.parameters()).device
        report = stage_report(config, result, device)
        return result.model, stage_record(config, result, report), lambda tmp: write_files(tmp, config, result, base=None)


def show(r: dict) -> None:
    print(f"recovered {r['model']} -> {r['out']}  ({r['method']}, {r['steps']} steps in {r['seconds']:.0f} s; "
          f"{r['dtype']} on {r['device']})")
    print(f"{'':<22}{'before':>12}{'after':>12}")
    print(f"{'validation loss':<22}{r['validation_loss_start']:>12.4f}{r['validation_loss']:>12.4f}   "
          f"(best at step {r['best_step']})")
    if "ppl_before" in r:
        print(f"{'perplexity':<22}{r['ppl_before']:>12.3f}{r['ppl_after']:>12.3f}   ({Path(r['eval_text']).name})")
    d = r["data"]
    print(f"data: {d['kind']}, {d['train_sequences']} training and {d['validation_sequences']} validation sequences "
          f"({d['train_tokens']:,} training tokens)" + (f"; {d['dropped']} records dropped" if d["dropped"] else ""),
          file=sys.stdout)


COMMAND = Command(
    "recover", "fine-tune a pruned model (LoRA, distillation or full) and save it dense", add_arguments, run, show,
    DESCRIPTION, stage=RecoverStage(),
)
