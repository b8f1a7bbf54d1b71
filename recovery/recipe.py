"""The recovery recipe: one readable training loop that fine-tunes a pruned model and returns it dense.

:func:`recover` is the whole of it, top to bottom:

1. the data (tokenised and split, :mod:`recovery.data`);
2. what trains: LoRA adapters on every linear projection (``lora``, and ``kd`` by default) or
   all weights (``full``, ``kd`` with ``distill.weights: full``);
3. AdamW with a linear warm-up and a cosine decay, gradient accumulation and clipping;
4. the loss: cross-entropy on the labelled tokens, or (``kd``) forward KL to the frozen
   teacher's tempered logits mixed with it;
5. validation loss at step 0, every ``eval_every`` steps and at the end; the best weights by
   validation loss are kept (``select: best``);
6. resumable checkpoints every ``save_every`` steps;
7. the adapters merged into the weights: the result is a plain dense model of the pruned shape.

Same seed, same data, same machine: the same weights, whether or not the run was interrupted and
resumed.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pruners.errors import NonFiniteError, UsageError

from . import checkpoints
from .config import RecoverConfig, TrainConfig
from .data import IGNORE, TrainingData, build_data, collate, epoch_order, pad_id
from .lora import adapter_state, add_adapters, merge_adapters
from .losses import kd_loss, lm_loss


@dataclass
class RecoverResult:
    """What :func:`recover` returns: the recovered dense model and the run's history."""

    model: nn.Module
    steps: int
    best_step: int
    history: list[dict] = field(default_factory=list)  # per optimiser step: step, loss, lr, tokens, seconds
    validation: list[dict] = field(default_factory=list)  # per evaluation: step, loss, ppl
    data: dict = field(default_factory=dict)
    adapter: dict | None = None  # the trained LoRA tensors (peft names) and peft config, when adapters were trained
    seconds: float = 0.0
    peak_memory_bytes: int | None = None

    def summary(self) -> dict:
        first, chosen = self.validation[0], next(v for v in self.validation if v["step"] == self.best_step)
        return {
            "steps": self.steps, "best_step": self.best_step, "seconds": round(self.seconds, 3),
            "validation_loss_start": first["loss"], "validation_loss": chosen["loss"],
            "validation_ppl_start": first["ppl"], "validation_ppl": chosen["ppl"], "data": self.data,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


def total_steps(train: TrainConfig, n_train: int) -> int:
    """Optimiser steps of a run: ``train.max_steps``, or ``train.epochs`` passes over ``n_train`` sequences.

    >>> total_steps(TrainConfig(max_steps=None, epochs=2, batch_size=4), 10)
    6
    """
    if train.max_steps is not None:
        return train.max_steps
    per_epoch = math.ceil(n_train / (train.batch_size * train.grad_accum))
    return max(1, math.ceil(train.epochs * per_epoch))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """The learning rate of optimiser step ``step`` (0-based) as a fraction of the peak.

    >>> [round(lr_factor(s, 2, 6), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def flat_config(config: RecoverConfig) -> dict:
    """The options that shape the result, flattened (``{"train.lr": ..., "lora.r": ...}``), for checking a resume."""
    out = {}
    for section, value in config.model_dump(mode="json", include=set(RecoverConfig.model_fields)).items():
        if isinstance(value, dict):
            out.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            out[section] = value
    return out


class Batches:
    """The training sequences in seeded epoch order, ``batch_size`` at a time; its position is saved in checkpoints."""

    def __init__(self, data: TrainingData, batch_size: int, seed: int, pad: int):
        self.data, self.batch_size, self.seed, self.pad = data, batch_size, seed, pad
        self.epoch, self.position = 0, 0
        self.order = epoch_order(len(data.train), seed, 0)

    def next(self) -> dict[str, torch.Tensor]:
        if self.position >= len(self.order):
            self.epoch, self.position = self.epoch + 1, 0
            self.order = epoch_order(len(self.data.train), self.seed, self.epoch)
        take = self.order[self.position : self.position + self.batch_size]  # an epoch's last batch may be smaller
        self.position += len(take)
        return collate([self.data.train[i] for i in take], self.pad)

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.order = epoch_order(len(self.data.train), self.seed, self.epoch)


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """UsageError unless ``teacher`` predicts over the same vocabulary as ``student``."""
    vs, vt = student.get_output_embeddings().weight.shape[0], teacher.get_output_embeddings().weight.shape[0]
    if vs != vt:
        raise UsageError(
            f"the teacher's vocabulary has {vt} tokens but the pruned model's has {vs}: distillation compares "
            "their next-token distributions, so give the unpruned source model (--teacher DIR)"
        )


def recover(
    model: nn.Module,
    tokenizer,
    config: RecoverConfig,
    *,
    teacher: nn.Module | None = None,
    data: TrainingData | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    inplace: bool = False,
    allow_nonfinite: bool = False,
) -> RecoverResult:
    """Fine-tune the pruned ``model`` as ``config`` says and return it, adapters merged: a plain dense model.

    Parameters
    ----------
    model : nn.Module
        The pruned causal LM, on the device and in the dtype it trains in.  Not modified unless
        ``inplace`` (then it is trained and returned: no copy of the weights is made).
    tokenizer
        Its tokenizer (for the data, when ``data`` is not given, and for padding).
    config : RecoverConfig
        The method, data, adapters, distillation and training options.
    teacher : nn.Module, optional
        The unpruned model, for ``method="kd"`` (required there); frozen, on the same device.
    data : TrainingData, optional
        The data already built by :func:`recovery.data.build_data` (it is built here otherwise).
    checkpoint_dir : path, optional
        Where resumable checkpoints go (every ``train.save_every`` steps).
    resume : bool
        Continue from the newest checkpoint in ``checkpoint_dir`` (same options required).

    Raises
    ------
    UsageError
        A teacher missing or with another vocabulary; a checkpoint written with other options.
    NonFiniteError
        The loss became NaN/Inf (unless ``allow_nonfinite``).
    """
    t = config.train
    data = data if data is not None else build_data(config.data, tokenizer)
    if config.method == "kd":
        if teacher is None:
            raise UsageError("method 'kd' distils from the unpruned model: pass a teacher (CLI: --teacher DIR)")
        check_teacher(model, teacher)
        teacher.eval().requires_grad_(False)
    if not inplace:
        model = copy.deepcopy(model)
    device = next(model.parameters()).device
    if config.trains_adapters:
        model = add_adapters(model, config.lora, t.seed)
    else:
        model.requires_grad_(True)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}  # (tied weights once)
    optimizer = torch.optim.AdamW(trainable.values(), lr=t.lr, weight_decay=t.weight_decay)
    steps = total_steps(t, len(data.train))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.warmup_steps, steps, t.min_lr_ratio))
    batches = Batches(data, t.batch_size, t.seed, pad_id(tokenizer))
    flat = flat_config(config)
    history: list[dict] = []
    validation: list[dict] = []
    best: dict = {"loss": math.inf, "step": 0, "state": None}
    step, elapsed = 0, 0.0

    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    saved = checkpoints.latest(ckdir) if (resume and ckdir is not None) else None
    if resume and saved is None:
        raise UsageError(f"--resume: no checkpoint to resume from in {ckdir}; run without --resume")
    if saved is not None:
        state = checkpoints.load(saved, flat)
        _load_tensors(trainable, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        batches.restore(state["batches"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, elapsed = int(state["step"]), float(state["seconds"])
        history, validation = json.loads(state["history"]), json.loads(state["validation"])
        best = {"loss": float(state["best_loss"]), "step": int(state["best_step"]), "state": state["best"]}
    else:
        torch.manual_seed(t.seed)  # dropout (LoRA's, the model's) draws from here
        best = _evaluated(model, data, t, 0, validation, best, trainable)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=steps, initial=step, desc=f"recover ({config.method})", disable=not progress, leave=False)
    start = time.perf_counter() - elapsed
    model.train()
    while step < steps:
        loss_sum, tokens = 0.0, 0
        for _ in range(t.grad_accum):
            batch = {k: v.to(device) for k, v in batches.next().items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
            if config.method == "kd":
                with torch.no_grad():
                    target = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = kd_loss(logits, target, batch["labels"], config.distill.temperature, config.distill.weight)
            else:
                loss = lm_loss(logits, batch["labels"])
            (loss / t.grad_accum).backward()
            loss_sum += loss.item() / t.grad_accum
            tokens += int(batch["attention_mask"].sum())
        if not math.isfinite(loss_sum) and not allow_nonfinite:
            raise NonFiniteError(
                f"the training loss is {loss_sum} at step {step + 1}: lower train.lr (now {t.lr:g}) or check the data; "
                "pass --allow-nonfinite to go on anyway"
            )
        if t.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(list(trainable.values()), t.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seconds = time.perf_counter() - start
        history.append({"step": step, "loss": loss_sum, "lr": lr, "tokens": tokens, "seconds": round(seconds, 3)})
        rate = tokens / max(1e-9, seconds - (history[-2]["seconds"] if len(history) > 1 else elapsed))
        bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
        bar.update(1)
        if step % t.eval_every == 0 or step == steps:
            best = _evaluated(model, data, t, step, validation, best, trainable)
            model.train()
        if ckdir is not None and t.save_every and step % t.save_every == 0 and step < steps:
            checkpoints.save(ckdir, step, {
                "config": json.dumps(flat), "step": step, "seconds": time.perf_counter() - start,
                "trainable": {n: p.detach().clone() for n, p in trainable.items()},
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "batches": batches.state(),
                "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                "history": json.dumps(history), "validation": json.dumps(validation),
                "best_loss": best["loss"], "best_step": best["step"], "best": best["state"],
            })
    bar.close()
    model.eval()
    chosen = step
    if t.select == "best" and best["state"] is not None:
        _load_tensors(trainable, best["state"])
        chosen = best["step"]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    adapter = None
    if config.trains_adapters:
        adapter = {"tensors": adapter_state(model), "config": model.peft_config["default"]}
        model = merge_adapters(model)
    model.requires_grad_(False)
    return RecoverResult(
        model, step, chosen, history, validation, data.summary(), adapter, time.perf_counter() - start, peak
    )


def _evaluated(model, data, t, step, validation, best, trainable) -> dict:
    """Append the validation loss at ``step``; return the best-so-far record (a copy of the trained tensors)."""
    loss = validation_loss(model, data, t.batch_size, t.eval_batches)
    validation.append({"step": step, "loss": loss, "ppl": math.exp(min(loss, 709.0))})
    if loss < best["loss"]:
        return {"loss": loss, "step": step, "state": {n: p.detach().clone() for n, p in trainable.items()}}
    return best


@torch.no_grad()
def validation_loss(model: nn.Module, data: TrainingData, batch_size: int, max_batches: int | None = None) -> float:
    """Mean next-token cross-entropy over the labelled tokens of the validation split (token-weighted)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    seqs = data.validation
    for n, i in enumerate(range(0, len(seqs), batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        batch = {k: v.to(device) for k, v in collate(seqs[i : i + batch_size], 0).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        labelled = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += lm_loss(logits, batch["labels"]).item() * labelled
        count += labelled
    model.train(was_training)
    return total / max(1, count)


def _load_tensors(trainable: dict[str, nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(trainable) ^ set(state))
    if missing:
        raise UsageError(f"--resume: the checkpoint's trained tensors do not match this model's ({missing[:3]} ...)")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(state[n])
