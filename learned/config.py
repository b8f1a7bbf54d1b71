"""The options of learned pruning (``depprune prune --method compresso``): one pydantic model, YAML-loadable.

:class:`CompressoConfig` reuses the recovery recipe's data, LoRA and training options and adds
the gates, the size constraint and the collaborative prompt.  In a ``depprune prune`` run file
it sits under ``method_options``::

    model: ../shared/models/stories260K
    out: out/stories260K-compresso
    method: compresso
    ratio: 0.2
    kinds: [attention, mlp_channel]
    method_options:
      data: {source: ../shared/data/tinystories-train/tinystories-train.cased.txt, seq_len: 128}
      train: {lr: 0.002, batch_size: 16, max_steps: 300}
      gates: {lr: 0.2, init_open: 0.995}
      constraint: {scope: global, warmup: 0.25, lr: 1.0}
      prompt: {enabled: true}

>>> cfg = CompressoConfig(data={"source": "train.txt"})
>>> cfg.constraint.scope, cfg.prompt.enabled, cfg.train.max_steps
('global', True, 300)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recovery import DataConfig, LoraOptions, TrainConfig

DEFAULT_PROMPT = (
    "Note: you are being made smaller. Some of your attention heads and feed-forward channels are being removed "
    "so that you run faster and fit in less memory. Keep what you know and how you write in the parts that remain, "
    "and go on as well as before."
)


class GateOptions(BaseModel):
    """The hard-concrete gates: one per unit of every planned group (Louizos et al.; temperature 2/3, limits (-0.1, 1.1))."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(0.2, gt=0, description="learning rate of the gates' log-alpha (Adam, constant)")
    init_open: float = Field(0.995, gt=0, lt=1, description="probability that a gate is open at the start")


class ConstraintOptions(BaseModel):
    """The size target as a Lagrangian: lambda1 (s - t) + lambda2 (s - t)^2, the multipliers learned by ascent."""

    model_config = ConfigDict(extra="forbid")

    scope: Literal["global", "per_layer"] = Field(
        "global",
        description="global: one constraint on the whole model, the gates decide where to prune (non-uniform); "
        "per_layer: one constraint per layer, every layer reaches the same sparsity (not with hidden_channel)",
    )
    warmup: float = Field(
        0.25, ge=0, le=1,
        description="fraction of the steps over which the target rises linearly from 0 to the ratio (the rest "
        "trains the adapters on what stays)",
    )
    lr: float = Field(1.0, gt=0, description="learning rate of the multipliers' ascent (plain gradient ascent)")
    lambda2_init: float = Field(
        1000.0, ge=0,
        description="starting value of lambda2: a stiff quadratic term pulls the sparsity to the target at once "
        "and damps the swings of lambda1",
    )


class PromptOptions(BaseModel):
    """The collaborative prompt: a text prepended to every training example, its tokens masked out of the loss."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="prepend the prompt (false: the ablation without it)")
    text: str = Field(DEFAULT_PROMPT, min_length=1, description="the prompt's text")


class CompressoConfig(BaseModel):
    """Learned pruning: gates, LoRA and the size constraint trained together on ``data``, then a sliced export.

    >>> CompressoConfig(data={"source": "a.txt"}, train={"select": "best"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for CompressoConfig
      Value error, train.select 'best' is not used here: the gates change the model's size as they train, ...
    ...
    """

    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(..., description="training data: Alpaca records (.json/.jsonl) or plain text")
    lora: LoraOptions = Field(default_factory=LoraOptions, description="LoRA adapters trained with the gates, merged at export")
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="optimiser of the adapters (lr, warm-up and cosine), batch, length, seed; validation every eval_every",
    )
    gates: GateOptions = Field(default_factory=GateOptions, description="the hard-concrete gates")
    constraint: ConstraintOptions = Field(default_factory=ConstraintOptions, description="the size target")
    prompt: PromptOptions = Field(default_factory=PromptOptions, description="the collaborative prompt")

    @model_validator(mode="after")
    def _unused_train_options(self):
        t = self.train
        if "select" in t.model_fields_set and t.select != "last":
            raise ValueError(
                f"train.select {t.select!r} is not used here: the gates change the model's size as they train, so the "
                "exported model is the last one; leave train.select out"
            )
        if t.save_every is not None:
            raise ValueError("train.save_every: learned pruning writes no resumable checkpoints; leave it out")
        return self
