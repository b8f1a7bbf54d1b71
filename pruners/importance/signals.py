"""Calibration signals for estimators: gradients, diagonal Fisher, input-activation statistics.

Gradients are taken **sample by sample**: only one sample's activations are alive at a time.
Each parameter's per-sample gradient is folded into float32 sums (of the gradient, and of its
square for the diagonal Fisher) by a post-accumulate-grad hook as soon as backward has produced
it, and dropped, so a full set of per-sample gradients never exists (weights + one float32
buffer per signal + one sample's gradients and activations).  Whatever the model's dtype
(bf16, fp16), every accumulator -- gradient, Fisher, activation sums -- is float32, on the
model's device; the loss is computed in float32 from the logits, and each sample's loss is
back-propagated unscaled (the mean over samples is taken in float32 afterwards), so that
half-precision gradients are not shrunk towards underflow by ``1 / n_samples``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .layerwise import layerwise_gradients

SIGNALS = frozenset({"grad", "fisher", "activations"})

# which weight axis a module's input features run along (extend for custom linear layers)
INPUT_AXIS: dict[str, int] = {
    "torch.nn.modules.linear.Linear": 1,
    "transformers.pytorch_utils.Conv1D": 0,
}


@dataclass
class Signals:
    """Per parameter name: mean gradient, mean squared per-sample gradient, input statistics."""

    grad: dict[str, torch.Tensor] = field(default_factory=dict)
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    act_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # sum over tokens of x_j^2
    act_sum: dict[str, torch.Tensor] = field(default_factory=dict)  # sum over tokens of x_j
    act_count: dict[str, int] = field(default_factory=dict)  # tokens seen
    input_axis: dict[str, int] = field(default_factory=dict)  # weight axis of the input features

    def act_norm(self, name: str) -> torch.Tensor | None:
        """``||X_j||`` over all calibration tokens, per input feature of weight ``name``."""
        sq = self.act_sq.get(name)
        return None if sq is None else sq.sqrt()

    def act_var(self, name: str) -> torch.Tensor | None:
        """Variance of each input feature over calibration tokens."""
        if name not in self.act_sq:
            return None
        n = self.act_count[name]
        mean = self.act_sum[name] / n
        return (self.act_sq[name] / n - mean * mean).clamp_min(0)


def _qualname(mod: nn.Module) -> str | None:
    for cls in type(mod).__mro__:
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key in INPUT_AXIS:
            return key
    return None


def _causal_lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    logits = out if isinstance(out, torch.Tensor) else out.logits  # (1, T, vocab)
    return nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])


def collect_signals(
    model: nn.Module,
    samples: Sequence[torch.Tensor],
    needs: Iterable[str],
    progress: bool = True,
    params: Iterable[str] | None = None,
    on_layer: Callable[[list[str]], None] | None = None,
    into: Signals | None = None,
    keep_bytes: int = 0,
) -> Signals:
    """Run the calibration samples through ``model`` and gather what ``needs`` asks for.

    ``params`` names the weights whose signals are wanted (default: all).  Only they get
    gradients: e.g. the embedding and the LM head, which no attention or MLP group reads, are
    not differentiated, which saves their gradient memory.  A wanted weight that receives no
    gradient (it does not reach the loss) gets a zero one, and a wanted layer that never runs
    zero input statistics: every wanted weight has its signals, so a missing one is never
    mistaken for "not applicable".  ``model`` is left as it was: gradients are cleared and
    hooks removed afterwards.

    With ``on_layer``, when only ``"grad"`` is needed and the decoder layers form a plain chain,
    gradients are taken one layer at a time (:mod:`.layerwise`): ``on_layer(names)`` is called
    as soon as those weights' mean gradients are complete in ``into.grad`` (``into``: the
    :class:`Signals` to fill, a new one by default), and may score and drop them; the other
    weights' gradients are there when this returns.  ``keep_bytes`` is the memory that pass may
    spend on activations kept from the forward pass instead of running layers forward again
    (:func:`.layerwise.layerwise_gradients`).
    """
    needs = set(needs)
    unknown = needs - SIGNALS
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}; known: {sorted(SIGNALS)}")
    sig = Signals() if into is None else into
    if not needs or not samples:
        return sig
    all_params = dict(model.named_parameters())
    wanted = set(all_params) if params is None else set(params) & set(all_params)
    wants_grad = bool(needs & {"grad", "fisher"})
    if wants_grad and not wanted:
        raise ValueError("gradient signals were asked for, but none of the given params is a parameter of the model")
    hooks = _activation_hooks(model, sig, wanted) if "activations" in needs else []
    if wants_grad:
        hooks += [all_params[n].register_post_accumulate_grad_hook(_gradient_hook(sig, n, needs)) for n in wanted]
    was_training = model.training
    saved = {n: p.requires_grad for n, p in all_params.items()}
    model.eval()
    for n, p in all_params.items():
        p.requires_grad_(wants_grad and n in wanted)
        p.grad = None
    handed: set[str] = set()

    def hand(names: list[str]) -> None:
        handed.update(names)
        on_layer(names)

    layerwise = False
    try:
        if on_layer is not None and needs == {"grad"}:
            why = layerwise_gradients(model, samples, {n: all_params[n] for n in wanted}, sig.grad, hand, progress, keep_bytes)
            layerwise = why is None
        if not layerwise:
            _run_samples(model, samples, wants_grad, progress)
    finally:
        for h in hooks:
            h.remove()
        for n, p in all_params.items():
            p.grad = None
            p.requires_grad_(saved[n])
        model.train(was_training)
    _fill_missing(sig, {n: all_params[n] for n in wanted if n not in handed}, needs)
    if not layerwise:  # (layer by layer, the means are taken as each gradient is complete)
        for acc in (sig.grad, sig.fisher):  # sums over samples -> means
            for g in acc.values():
                g.div_(len(samples))
    return sig


def _activation_hooks(model: nn.Module, sig: Signals, wanted: set[str]) -> list:
    """Forward pre-hooks gathering input statistics of every known linear layer whose weight is wanted."""
    hooks = []
    for path, mod in model.named_modules():
        key = _qualname(mod)
        if key is None or not isinstance(getattr(mod, "weight", None), torch.Tensor):
            continue
        name = f"{path}.weight" if path else "weight"
        if name in wanted:
            sig.input_axis[name] = INPUT_AXIS[key]
            hooks.append(mod.register_forward_pre_hook(_stats_hook(sig, name)))
    return hooks


def _run_samples(model: nn.Module, samples: Sequence[torch.Tensor], wants_grad: bool, progress: bool) -> None:
    """One forward pass per sample (and its backward when gradients are wanted: the hooks fold them in)."""
    device = next(model.parameters()).device
    for ids in tqdm(samples, desc="calibration", disable=not progress, leave=False):
        ids = ids.to(device)  # (1, T)
        if wants_grad:
            _causal_lm_loss(model, ids).backward()  # the hooks fold in and clear every .grad
        else:
            with torch.no_grad():
                model(ids)


def _fill_missing(sig: Signals, wanted: dict[str, torch.Tensor], needs: set[str]) -> None:
    """Zero gradients (and Fisher) for wanted weights backward never reached; zero statistics for layers that never ran."""
    for name, p in wanted.items():
        for signal, acc in (("grad", sig.grad), ("fisher", sig.fisher)):
            if signal in needs and name not in acc:
                acc[name] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)  # (p.shape) float32
    for name, axis in sig.input_axis.items():
        if name not in sig.act_sq:
            p = wanted[name]
            features = p.shape[axis]
            sig.act_sq[name] = torch.zeros(features, dtype=torch.float32, device=p.device)
            sig.act_sum[name] = torch.zeros(features, dtype=torch.float32, device=p.device)
            sig.act_count[name] = 1  # no token seen: zero mean and variance, not 0 / 0


def _gradient_hook(sig: Signals, name: str, needs: set[str]):
    """Post-accumulate-grad hook: add this sample's gradient of ``name`` (in float32) to the
    gradient sum when ``"grad"`` is needed and its square to the Fisher sum when ``"fisher"``
    is, then clear ``.grad``."""

    def hook(p: torch.Tensor):
        g = p.grad.detach().float()  # this sample's gradient, (p.shape) float32
        if "fisher" in needs:
            if name in sig.fisher:
                sig.fisher[name].addcmul_(g, g)
            else:
                sig.fisher[name] = torch.mul(g, g)
        if "grad" in needs:
            if name in sig.grad:
                sig.grad[name].add_(g)
            else:
                sig.grad[name] = g  # (the .grad itself when float32: cleared below, so the sum owns it)
        p.grad = None

    return hook


def _stats_hook(sig: Signals, name: str):
    def hook(mod, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return
        x = x.detach().float().reshape(-1, x.shape[-1])  # (tokens, in_features)
        sq, s = (x * x).sum(0), x.sum(0)
        if name in sig.act_sq:
            sig.act_sq[name] += sq
            sig.act_sum[name] += s
            sig.act_count[name] += x.shape[0]
        else:
            sig.act_sq[name], sig.act_sum[name], sig.act_count[name] = sq, s, x.shape[0]

    return hook
