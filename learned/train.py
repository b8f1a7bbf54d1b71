"""The learned-pruning recipe: gates, LoRA and the size constraint trained together, in one readable loop.

:func:`train_gates` is the whole of it, top to bottom:

1. LoRA adapters on the (copied) model, base weights frozen (:func:`recovery.add_adapters`);
2. one hard-concrete gate per unit of every planned group, applied to the base weights *and*
   the adapters (:mod:`learned.adapted_gates`), through :func:`pruners.attach_gate_source`;
3. AdamW for LoRA (warm-up and cosine) and the gates (constant); plain gradient ascent for the
   multipliers (:func:`learned.lagrangian.ascend`, then SGD);
4. each forward pass draws new gates; the loss is cross-entropy on the labelled tokens (the
   collaborative prompt carries none) plus the Lagrangian of the expected sparsity against the
   target, ramped from 0 over the warm-up;
5. validation loss (deterministic gates) every ``eval_every`` steps and at the end.

Same seed, same data, same machine: the same gates and adapters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from depgraph.groups import Group
from pruners import DeppruneError, attach_gate_source
from recovery import Batches, TrainingData, add_adapters, lm_loss, lr_factor, pad_id, total_steps, validation_loss

from .adapted_gates import adapted_groups
from .config import CompressoConfig
from .expected_size import ExpectedSize
from .gates import HardConcreteGates
from .lagrangian import Lagrangian, ascend, ramped_target


class NonFiniteLossError(DeppruneError, ValueError):
    """The training loss became NaN/Inf."""


@dataclass
class Trained:
    """What :func:`train_gates` returns: the adapted, gated model and its gates, and the run's history."""

    model: nn.Module  # the peft model, gates attached to its base model
    gates: HardConcreteGates
    steps: int
    history: list[dict] = field(default_factory=list)  # per step: loss, penalty, sparsity, target, lambdas, lr
    validation: list[dict] = field(default_factory=list)  # per evaluation: step, loss, ppl, sparsity
    seconds: float = 0.0


class Sparsity:
    """The expected sparsity: one value (global scope) or one per layer (``per_layer``), and its target.

    Global: ``1 - E[size] / total`` over the whole model, target ``ratio``.  Per layer: the
    parameters of the tensors each layer's groups cut, target ``ratio * total / sum(layer sizes)``
    (the same share of every layer, adding up to ``ratio`` of the model).
    """

    def __init__(self, groups: list[Group], total: int, ratio: float, scope: str):
        self.whole, self.total, self.ratio = ExpectedSize(groups, total), total, ratio
        if scope == "global":
            self.parts = [ExpectedSize(groups, total)]
            self.target = ratio
            return
        layers = sorted({g.layer for g in groups}, key=lambda x: -1 if x is None else x)
        if None in layers:
            raise DeppruneError("constraint.scope per_layer needs every planned group in a layer: leave hidden_channel out")
        self.parts = [ExpectedSize([g for g in groups if g.layer == layer]) for layer in layers]
        self.target = ratio * total / sum(part.total for part in self.parts)
        if self.target >= 1:
            raise DeppruneError(
                f"ratio {ratio} is {self.target:.0%} of what the planned layers hold: per_layer constraints cannot reach it"
            )

    def overall(self, probs: dict[str, torch.Tensor]) -> float:
        """The expected sparsity of the whole model (what ``ratio`` asks for), whatever the scope."""
        with torch.no_grad():
            return float(1 - self.whole(probs) / self.total)

    def __call__(self, probs: dict[str, torch.Tensor]) -> torch.Tensor:
        values = [1 - part(probs) / part.total for part in self.parts]
        return values[0] if len(values) == 1 else torch.stack(values)  # () or (layers,)


def train_gates(
    model: nn.Module,
    groups: list[Group],
    total_params: int,
    ratio: float,
    data: TrainingData,
    tokenizer,
    options: CompressoConfig,
    progress: bool = True,
    allow_nonfinite: bool = False,
) -> Trained:
    """Train gates on ``groups`` and LoRA adapters on ``model`` (modified in place: pass a copy) to remove ``ratio``."""
    t, c = options.train, options.constraint
    device = next(model.parameters()).device
    torch.manual_seed(t.seed)  # gate draws and dropout come from here
    model = add_adapters(model, options.lora, t.seed)
    base = model.get_base_model()
    gates = HardConcreteGates(groups, options.gates.init_open).to(device)
    attach_gate_source(base, adapted_groups(base, groups), gates)
    sparsity = Sparsity(groups, total_params, ratio, c.scope)
    lagrangian = Lagrangian(len(sparsity.parts), c.lambda2_init).to(device)
    adapters = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    optimizer = torch.optim.AdamW([
        {"params": adapters, "lr": t.lr, "weight_decay": t.weight_decay},
        # a short memory for the gates: with Adam's usual 0.999 a gate that has closed keeps the large
        # gradients of its passage in its second moment and barely moves when the constraint wants it back
        {"params": list(gates.parameters()), "lr": options.gates.lr, "weight_decay": 0.0, "betas": (0.5, 0.9)},
    ])
    # plain gradient ascent: a multiplier moves in proportion to the gap it measures (Adam would move it
    # by about its learning rate whatever the gap, and overshoot)
    ascent = torch.optim.SGD(lagrangian.parameters(), lr=c.lr)
    steps = total_steps(t, len(data.train))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s: lr_factor(s, t.warmup_steps, steps, t.min_lr_ratio), lambda s: 1.0]
    )
    warmup = round(c.warmup * steps)
    batches = Batches(data, t.batch_size, t.seed, pad_id(tokenizer))
    history: list[dict] = []
    validation = [_validation(model, gates, sparsity, data, t, 0)]
    bar = tqdm(total=steps, desc="compresso", disable=not progress, leave=False)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        target = ramped_target(step, sparsity.target, warmup)
        loss_sum, penalty_sum = 0.0, 0.0
        for _ in range(t.grad_accum):
            batch = {k: v.to(device) for k, v in batches.next().items()}
            gates.resample()  # one draw per forward pass, shared by every member of a group
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
            lm = lm_loss(logits, batch["labels"])
            s = sparsity(gates.prob_open())  # () or (layers,)
            penalty = lagrangian(s, target)
            ((lm + penalty) / t.grad_accum).backward()
            loss_sum += lm.item() / t.grad_accum
            penalty_sum += penalty.item() / t.grad_accum
        if not math.isfinite(loss_sum) and not allow_nonfinite:
            raise NonFiniteLossError(
                f"the training loss is {loss_sum} at step {step + 1}: lower train.lr (now {t.lr:g}) or gates.lr "
                f"(now {options.gates.lr:g}); pass --allow-nonfinite to go on anyway"
            )
        ascend(lagrangian)
        if t.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(adapters, t.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        gates.project()
        ascent.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ascent.zero_grad(set_to_none=True)
        expected = sparsity.overall(gates.prob_open())
        history.append({
            "step": step + 1, "loss": loss_sum, "penalty": penalty_sum, "sparsity": expected,
            "target": target * sparsity.ratio / sparsity.target,  # as a share of the whole model
            "lambda1": float(lagrangian.lambda1.detach().mean()), "lambda2": float(lagrangian.lambda2.detach().mean()),
            "lr": lr, "seconds": round(time.perf_counter() - start, 3),
        })
        bar.set_postfix(loss=f"{loss_sum:.3f}", sparsity=f"{expected:.3f}", target=f"{target:.3f}",
                        lam=f"{history[-1]['lambda1']:.3f}")
        bar.update(1)
        if (step + 1) % t.eval_every == 0 or step + 1 == steps:
            validation.append(_validation(model, gates, sparsity, data, t, step + 1))
            model.train()
    bar.close()
    model.eval()
    return Trained(model, gates, steps, history, validation, time.perf_counter() - start)


def _validation(model, gates, sparsity, data, t, step: int) -> dict:
    """Validation loss with the deterministic gates, and the expected sparsity, at ``step``."""
    loss = validation_loss(model, data, t.batch_size, t.eval_batches)  # eval mode: deterministic gates
    expected = sparsity.overall(gates.prob_open())
    return {"step": step, "loss": loss, "ppl": math.exp(min(loss, 709.0)), "sparsity": expected}
