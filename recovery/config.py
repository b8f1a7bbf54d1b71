"""Every option of a recovery run, as pydantic models loadable from YAML or JSON.

The models nest by what they configure:

- :class:`DataConfig` -- the training text: plain text (packed windows) or Alpaca records;
- :class:`LoraOptions` -- the adapters of ``lora`` (and of ``kd`` with ``weights: lora``);
- :class:`DistillOptions` -- the teacher and the loss mix of ``kd``;
- :class:`TrainConfig` -- the optimiser, the schedule, the length of the run, the seed;
- :class:`RecoverConfig` -- one recovery: the method and the four above; what
  :func:`recovery.recover` takes;
- :class:`RecoverRunConfig` -- a ``depprune recover`` run: a RecoverConfig plus the model,
  the output, the device and dtype.

>>> cfg = RecoverConfig(data={"source": "train.txt"})
>>> cfg.method, cfg.lora.r, cfg.lora.alpha, cfg.train.max_steps
('lora', 8, 16.0, 300)

A run file (``depprune recover --config recover.yaml --max-steps 100`` overrides its length)::

    model: out/stories260K-pruned
    out: out/stories260K-recovered
    method: lora
    data: {source: ../shared/data/tinystories-train/tinystories-train.cased.txt, seq_len: 256, validation: 64}
    lora: {r: 8, alpha: 16, dropout: 0.05}
    train: {lr: 0.002, batch_size: 16, max_steps: 300, eval_every: 50, seed: 0}

In a ``depprune prune`` run file the same options (without ``model`` and ``out``) sit under
``recover:``, and ``depprune prune --recover FILE`` sets ``recover.data.source``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SEED = 2**32 - 1


class DataConfig(BaseModel):
    """The fine-tuning data and how it becomes token sequences."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        ..., description="Alpaca records in a .json/.jsonl file (instruction, optional input, output), or plain text "
        "in any other file (documents separated by <|endoftext|> or blank lines)",
    )
    seq_len: int = Field(
        256, strict=True, ge=2,
        description="tokens per sequence: text is packed into windows of this length (documents joined with BOS/EOS); "
        "Alpaca records are cut to it",
    )
    train_on_prompt: bool = Field(
        False, description="Alpaca only: take the loss on the whole record, not only on the response tokens"
    )
    validation: float = Field(
        0.05, gt=0,
        description="held-out sequences for validation loss: a fraction in (0, 1) of them, or a count (1, 2, ...); "
        "the last ones of the file, the same whatever the seed",
    )

    @field_validator("validation")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError(f"validation {v} is neither a fraction in (0, 1) nor a whole number of sequences")
        return v


class LoraOptions(BaseModel):
    """LoRA adapters (peft), LLM-Pruner's defaults; merged into the weights when training ends."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, strict=True, ge=1, description="rank of every adapter")
    alpha: float = Field(16.0, gt=0, description="scale numerator: the update is (alpha / r) * B @ A")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="modules to adapt: 'all-linear' (every linear projection of the decoder, not the LM head) "
        "or a list of module-name suffixes, e.g. [q_proj, v_proj]",
    )


class DistillOptions(BaseModel):
    """Knowledge distillation from the unpruned model: forward KL on tempered logits, mixed with cross-entropy."""

    model_config = ConfigDict(extra="forbid")

    teacher: str | None = Field(
        None, description="teacher model directory (default: the source recorded in the pruned model's config.json)"
    )
    temperature: float = Field(2.0, gt=0, description="softmax temperature of teacher and student; the KL is scaled by T^2")
    weight: float = Field(
        0.5, ge=0, le=1, description="loss = weight * T^2 * KL(teacher || student) + (1 - weight) * cross-entropy"
    )
    weights: Literal["lora", "full"] = Field("lora", description="what the student trains: LoRA adapters or all weights")


class TrainConfig(BaseModel):
    """The training loop: AdamW, linear warm-up then cosine decay, accumulation, clipping, evaluation, checkpoints."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(10, strict=True, ge=0, description="optimiser steps of linear warm-up from 0 to lr")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the cosine ends at lr * min_lr_ratio")
    batch_size: int = Field(16, strict=True, ge=1, description="sequences per forward pass")
    grad_accum: int = Field(1, strict=True, ge=1, description="forward passes per optimiser step")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm to this (null: no clipping)")
    max_steps: int | None = Field(
        300, strict=True, ge=1, description="optimiser steps; null: train `epochs` passes over the training split"
    )
    epochs: float | None = Field(None, gt=0, description="passes over the training split, when max_steps is null")
    eval_every: int = Field(50, strict=True, ge=1, description="validation loss every this many steps (and at the end)")
    eval_batches: int | None = Field(
        None, strict=True, ge=1, description="validation batches per evaluation (null: the whole validation split)"
    )
    save_every: int | None = Field(
        None, strict=True, ge=1,
        description="write a resumable checkpoint every this many steps (beside the output, removed when the run ends)",
    )
    select: Literal["best", "last"] = Field(
        "best", description="the weights written out: the best by validation loss (step 0 included) or the last"
    )
    seed: int = Field(0, strict=True, ge=0, le=MAX_SEED, description="seed of adapter init, dropout and data order")

    @model_validator(mode="after")
    def _one_length(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give the run's length: train.max_steps or train.epochs")
        if self.max_steps is not None and self.epochs is not None and "epochs" in self.model_fields_set:
            raise ValueError("give one of train.max_steps and train.epochs, not both (set max_steps: null for epochs)")
        return self


class RecoverConfig(BaseModel):
    """One recovery fine-tuning of a pruned model.

    >>> RecoverConfig(method="kd", data={"source": "a.txt"}).distill.weights
    'lora'
    >>> RecoverConfig(method="full", keep_adapter=True, data={"source": "a.txt"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for RecoverConfig
      Value error, keep_adapter saves LoRA adapters, but method 'full' trains all weights ...
    ...
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "kd", "full"] = Field(
        "lora",
        description="lora: LoRA adapters, merged at the end; kd: distillation from the unpruned teacher "
        "(LoRA or all weights, see distill.weights); full: all weights, for small models",
    )
    data: DataConfig = Field(..., description="the fine-tuning data")
    lora: LoraOptions = Field(default_factory=LoraOptions, description="LoRA adapters (method lora, or kd with LoRA)")
    distill: DistillOptions = Field(default_factory=DistillOptions, description="distillation (method kd)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimiser, schedule, length, seed")
    keep_adapter: bool = Field(False, description="also save the trained LoRA adapter (peft format) in OUT/adapter")

    @property
    def trains_adapters(self) -> bool:
        """Whether LoRA adapters are trained (and merged) rather than all weights."""
        return self.method == "lora" or (self.method == "kd" and self.distill.weights == "lora")

    @model_validator(mode="after")
    def _adapter_to_keep(self):
        if self.keep_adapter and not self.trains_adapters:
            raise ValueError(
                f"keep_adapter saves LoRA adapters, but method {self.method!r} trains all weights "
                "(use method lora, or kd with distill.weights: lora)"
            )
        return self


class RecoverRunConfig(RecoverConfig):
    """Everything a ``depprune recover`` run needs: the pruned model, the recovery, where it runs, the output."""

    model: str = Field(..., description="the pruned model directory (written by depprune)")
    out: str = Field(..., description="output directory (must be empty or absent unless force)")
    tokenizer: str | None = Field(None, description="tokenizer directory (default: the model's)")
    eval_text: str | None = Field(None, description="text file for perplexity before and after recovery")
    force: bool = Field(False, description="replace an output directory depprune wrote, and discard an interrupted run's checkpoints")
    resume: bool = Field(False, description="continue the interrupted run whose checkpoints lie beside out")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="dtype the model trains and is saved in (default: bfloat16 on CUDA, else the checkpoint's)"
    )
    allow_nonfinite: bool = Field(False, description="go on when weights, the loss or the perplexity are NaN/Inf")
