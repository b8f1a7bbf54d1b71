"""``compresso``: learned structured pruning (Xu et al. 2023), registered as ``depprune prune --method compresso``.

Hard-concrete gates on the traced groups and LoRA adapters are trained together on instruction
data or plain text under a Lagrangian size target, with an optional collaborative prompt; the
export keeps the units the gates expect, merges the adapters and slices the model like every
other pruner, so the result is a really smaller model that opens anywhere::

    from pruners import PruneConfig, load_model, load_tokenizer
    from learned import CompressoConfig, compresso

    model = load_model("../shared/models/stories260K")
    tokenizer = load_tokenizer("../shared/models/stories260K")
    options = CompressoConfig(data={"source": "../shared/data/tinystories-train/tinystories-train.cased.txt"})
    result = compresso(model, PruneConfig(ratio=0.2), options, tokenizer)   # the input model is not modified
    result.model, result.report["params_target"]

On the command line: ``depprune prune --method compresso --ratio 0.2 --data FILE --out OUT
[--max-steps N] [--no-prompt] [--recover FILE]``; the other options go under
``method_options`` in ``--config`` (:class:`learned.config.CompressoConfig`).
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from pruners import (
    DeppruneError,
    MethodFlag,
    PruneResult,
    analyze,
    count_params,
    method_options,
    plan_of,
    register_method,
    select_groups,
)
from recovery import TrainingData, build_data, read_data, validation_loss

from .config import CompressoConfig
from .export import export, kept_units
from .norms import check_matchable
from .prompt import prompt_ids, prompted
from .train import Sparsity, train_gates


class CompressoUsageError(DeppruneError, ValueError):
    """A run option learned pruning cannot honour."""


# run-config fields that belong to one-shot scoring: refused when changed from their defaults with compresso
SCORING_FIELDS = {
    "importance": "--importance", "importance_options": "--importance-option", "aggregation": "--aggregation",
    "strategy": "--strategy", "align": "--align",
}


def check_config(config, options: CompressoConfig | None = None) -> None:
    """Refuse run options learned pruning cannot honour (one line naming the option)."""
    if config.ratio is None:
        raise CompressoUsageError("--method compresso learns the sizes under one parameter target: give --ratio, not --kind-ratio")
    if config.rounds != 1:
        raise CompressoUsageError(f"--rounds {config.rounds}: --method compresso trains once; leave --rounds out")
    if "query_head" in config.kinds:
        raise CompressoUsageError("--method compresso gates whole heads or KV groups ('attention'), not query_head")
    for name, flag in SCORING_FIELDS.items():
        if getattr(config, name) != type(config).model_fields[name].get_default(call_default_factory=True):
            raise CompressoUsageError(
                f"{flag}: --method compresso learns its own scores and sizes (method_options.constraint.scope "
                "says global or per layer); leave it out"
            )
    if config.calibration.source is not None:
        raise CompressoUsageError("--calibration: --method compresso trains on --data; leave --calibration out")
    if options is not None and "seed" in options.train.model_fields_set:
        raise CompressoUsageError("method_options.train.seed: --method compresso uses the run's --seed; leave it out")


def training_data(options: CompressoConfig, tokenizer) -> TrainingData:
    """The tokenised training data, with the collaborative prompt in front of every example when it is enabled."""
    data = build_data(options.data, tokenizer)
    if options.prompt.enabled:
        data = prompted(data, prompt_ids(tokenizer, options.prompt.text), tokenizer.bos_token_id)
    return data


def compresso(
    model: nn.Module,
    config,
    options: CompressoConfig,
    tokenizer,
    *,
    progress: bool = True,
    analysis=None,
    data: TrainingData | None = None,
) -> PruneResult:
    """Learn which units of ``config.kinds`` to remove (``config.ratio`` of the parameters), export the sliced model.

    Parameters
    ----------
    model : nn.Module
        The source model, on the device and in the dtype it trains in; not modified.
    config : PruneConfig
        The target (``ratio``), the kinds and layers, ``min_units``, ``round_to`` and ``seed``.
    options : CompressoConfig
        Data, adapters, training, gates, constraint and prompt.
    tokenizer
        The model's tokenizer (for the data, when ``data`` is not given, and for padding).
    analysis : (trace, groups), optional
        From :func:`pruners.analyze` of a model of the same structure.
    data : TrainingData, optional
        :func:`training_data` already built.

    Returns
    -------
    PruneResult
        The sliced model, its record and plan; ``report`` holds the training history, the learned
        sizes per layer and the exact parameter count against the target.
    """
    check_config(config, options)
    options = options.model_copy(update={"train": options.train.model_copy(update={"seed": config.seed})})
    tr, groups = analysis if analysis is not None else analyze(model)
    chosen = select_groups(groups, config.kinds, config.layers)
    if not chosen:
        raise CompressoUsageError(f"no group of kinds {config.kinds} in layers {config.layers}: nothing to gate")
    if "hidden_channel" in config.kinds:
        check_matchable(model, chosen)
    total = count_params(model)
    sparsity = Sparsity(chosen, total, config.ratio, options.constraint.scope)
    if options.constraint.scope == "global":
        least = float(sparsity.parts[0]({g.id: torch.zeros(g.n_units) for g in chosen}))  # every gate closed
        if 1 - least / total < config.ratio:
            raise CompressoUsageError(
                f"ratio {config.ratio}: kinds {config.kinds} can remove at most {1 - least / total:.1%} of the "
                "parameters (every unit gated off); lower --ratio or add --kinds"
            )
    data = data if data is not None else training_data(options, tokenizer)
    _check_context(model, data)
    work = copy.deepcopy(model)
    trained = train_gates(work, chosen, total, config.ratio, data, tokenizer, options, progress, config.allow_nonfinite)
    keep = kept_units(trained.gates, chosen, config.min_units, config.round_to)
    pruned, record, norms = export(trained.model, tr, groups, keep)
    pruned.requires_grad_(False)
    plan = plan_of(chosen, keep)
    after = count_params(pruned)
    exported = validation_loss(pruned, data, options.train.batch_size, options.train.eval_batches)
    report = _report(config, options, trained, chosen, keep, total, after, norms, exported)
    return PruneResult(pruned, record, plan, groups, total, after, report)


def _check_context(model: nn.Module, data: TrainingData) -> None:
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(e.input_ids) for e in data.train + data.validation)
    if isinstance(context, int) and longest > context:
        raise CompressoUsageError(
            f"training sequences reach {longest} tokens (data.seq_len plus the prompt) but the model's context is "
            f"{context}: lower data.seq_len"
        )


def _report(config, options, trained, chosen, keep, total: int, after: int, norms: dict, exported: float) -> dict:
    """The training and the learned sizes, for the run's report and ``config.json``."""
    target = total - round(config.ratio * total)
    last = trained.history[-1] if trained.history else {}
    per_layer: dict[str, dict[str, list[int]]] = {}
    for g in chosen:
        kept = len(keep.get(g.id, range(g.n_units)))
        entry = per_layer.setdefault(g.kind, {"layers": [], "kept": [], "units": []})
        entry["layers"].append(g.layer)
        entry["kept"].append(kept)
        entry["units"].append(g.n_units)
    val = trained.validation
    summary = [
        f"compresso: {trained.steps} steps in {trained.seconds:.0f} s, expected sparsity {last.get('sparsity', 0):.2%} "
        f"(target {config.ratio:.2%}), validation loss {val[0]['loss']:.3f} -> {val[-1]['loss']:.3f}"
        f"{', prompt' if options.prompt.enabled else ', no prompt'}",
        f"exported {after:,} parameters against a target of {target:,} ({after - target:+,}); "
        f"validation loss of the exported model {exported:.3f}",
    ]
    return {
        "steps": trained.steps, "seconds": round(trained.seconds, 3), "params_target": target,
        "params_after": after, "params_off_target": after - target,
        "expected_sparsity": last.get("sparsity"), "lambda1": last.get("lambda1"), "lambda2": last.get("lambda2"),
        "validation": val, "validation_loss_exported": exported, "history": trained.history, "kept_per_layer": per_layer, "prompt": options.prompt.enabled,
        "norms_matched": norms, "options": options.model_dump(mode="json"), "summary": summary,
    }


# --- the registration: depprune prune --method compresso -------------------------------------------------

FLAGS = (
    MethodFlag("--data", ("data", "source"), "training data for the gates and adapters: Alpaca .json/.jsonl or text",
               {"metavar": "FILE"}),
    MethodFlag("--max-steps", ("train", "max_steps"), "optimiser steps of the training (default 300)",
               {"type": int, "metavar": "N"}),
    MethodFlag("--prompt", ("prompt", "enabled"), "prepend the collaborative prompt to every training example "
               "(default; --no-prompt: the ablation without it)", {"action": argparse.BooleanOptionalAction}),
)


def _check(config) -> None:
    options = method_options(config)
    check_config(config, options)
    read_data(options.data)  # a bad data file: one line, before any model is loaded


def _inputs(config) -> list[str]:
    return [method_options(config).data.source]


def _prepare(config, tokenizer) -> TrainingData:
    return training_data(method_options(config), tokenizer)


@register_method(
    "compresso", options=CompressoConfig, flags=FLAGS, check=_check, inputs=_inputs, prepare=_prepare, needs_tokenizer=True
)
def run(model, config, *, progress=True, analysis=None, tokenizer=None, samples=None, prepared=None) -> PruneResult:
    """The registered method: ``config`` is a :class:`~pruners.config.RunConfig` with ``method_options``."""
    if tokenizer is None:
        raise CompressoUsageError("--method compresso trains on text: it needs the model's tokenizer")
    return compresso(model, config, method_options(config), tokenizer, progress=progress, analysis=analysis, data=prepared)


