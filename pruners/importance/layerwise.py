"""Calibration gradients one decoder layer at a time, each layer's complete before the next is begun.

The ordinary way (:func:`.signals.collect_signals`) back-propagates each sample through the whole
model and sums every scored weight's gradient over the samples, so the sums of all layers are
alive together: one float32 buffer as large as every scored weight.  Here, for a model whose
decoder layers form a plain chain (:func:`chain_problem`):

1. each sample runs forward without autograd; a pre-hook on every layer of the stack
   (:func:`depgraph.repeats.layer_stack`) keeps its inputs, and a hook on the last layer turns
   its output into a leaf, so that the loss is differentiated only through what follows the
   stack (final norm, LM head).  The first layers whose activations fit in ``keep_bytes`` run
   this pass with autograd instead, each from a leaf of its own input, and keep what autograd
   saved (their count is settled on the first micro-batch: :class:`_Keeping`);
2. from the last layer down, each layer is back-propagated from the gradient of its output --
   from its kept activations, or run again on each sample's kept inputs with autograd: its
   weights' gradients are summed over the samples and handed to ``on_layer`` (which scores them
   and may drop them) before the next layer down is begun; the gradient of its input is the
   next layer's output gradient;
3. what precedes the stack (the embeddings) gets its gradient from the first layer's input
   gradient, with one more forward pass that stops at the first layer.

Samples of one length run side by side, :data:`BATCH_TOKENS` tokens at a time (larger matrix
products: a quarter to a third faster on CPU than one sample at a time).  Time: three forward
passes' worth of arithmetic per sample, as a whole-model backward, plus one more forward pass
of each layer that is run again.  Memory: weights + one layer's gradients + the kept layer inputs
(``samples x T x hidden`` per layer) + the kept activations (at most ``keep_bytes``) + one
layer's activations of one micro-batch.  The sums are the ordinary ones, up to float rounding.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from depgraph.repeats import layer_stack


class _Stop(Exception):
    """Raised by the first layer's pre-hook: what precedes the stack has run."""


def _hidden_in(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, Callable]:
    """A layer call's hidden states, and a function of other hidden states giving the call's ``(args, kwargs)``.

    The function holds every other input by reference, not the hidden states.
    """
    if args and isinstance(args[0], torch.Tensor):
        rest = args[1:]
        return args[0], lambda h: ((h, *rest), kwargs)
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        others = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return kwargs["hidden_states"], lambda h: (args, {**others, "hidden_states": h})
    return None, lambda h: (args, kwargs)


def _hidden_out(out: Any) -> tuple[torch.Tensor | None, Callable]:
    """A layer's output hidden states (the tensor, or the first item of a tuple) and how to replace them."""
    if isinstance(out, torch.Tensor):
        return out, lambda h: h
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0], lambda h: type(out)((h, *out[1:]))
    return None, lambda h: out


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _call_kwargs(model: nn.Module) -> dict:
    """``use_cache=False`` where the model takes it: a cache would grow when a layer runs again."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids, **_call_kwargs(model))
    return out if isinstance(out, torch.Tensor) else out.logits  # (1, T, vocab)


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The sum over the batch of each sample's mean next-token loss: its gradient is the sum of the samples'."""
    per_token = nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")  # (b, T-1)
    return per_token.mean(dim=1).sum()


BATCH_TOKENS = 512  # calibration tokens run side by side (larger matrix products; one layer's activations of them at a time)


def micro_batches(samples: Sequence[torch.Tensor], tokens: int = BATCH_TOKENS) -> list[torch.Tensor]:
    """Consecutive samples of one length stacked into ``(b, T)`` batches of at most ``tokens`` tokens (one sample at least).

    >>> [tuple(b.shape) for b in micro_batches([torch.zeros(1, 128)] * 5 + [torch.zeros(1, 64)])]
    [(4, 128), (1, 128), (1, 64)]
    """
    out: list[list[torch.Tensor]] = []
    for ids in samples:
        last = out[-1] if out else None
        if last and last[0].shape[1] == ids.shape[1] and (len(last) + 1) * ids.shape[1] <= tokens:
            last.append(ids)
        else:
            out.append([ids])
    return [torch.cat(group) for group in out]


def chain_problem(model: nn.Module, layers: nn.ModuleList, wanted: dict[str, nn.Parameter], probe: torch.Tensor) -> str | None:
    """Why the layers are not a plain chain for the wanted weights (``None``: they are).

    A short ``probe`` runs with autograd: every layer must run once, take the previous layer's
    output hidden states as its own, and take nothing else that depends on a wanted weight; and
    with the last layer's output made a leaf, the logits must depend on no wanted weight of the
    stack (nothing after the stack reads an earlier layer).
    """
    seen: list[tuple[torch.Tensor | None, list[torch.Tensor]]] = []
    outs: list[torch.Tensor | None] = []

    def pre(mod, args, kwargs):
        h, _ = _hidden_in(args, kwargs)
        seen.append((h, [t for t in _tensors((args, kwargs)) if t is not h]))

    def post(mod, args, kwargs, out):
        outs.append(_hidden_out(out)[0])

    def cut(mod, args, kwargs, out):
        h, put = _hidden_out(out)
        return put(h.detach().requires_grad_(True)) if h is not None else out

    hooks = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in layers]
    hooks += [m.register_forward_hook(post, with_kwargs=True) for m in layers]
    hooks.append(layers[-1].register_forward_hook(cut, with_kwargs=True))
    try:
        with torch.enable_grad():
            logits = _logits(model, probe)
    finally:
        for h in hooks:
            h.remove()
    if len(seen) != len(layers) or len(outs) != len(layers):
        return f"{len(layers)} layers, {len(seen)} layer calls"
    if any(h is None for h, _ in seen) or any(o is None for o in outs):
        return "a layer's hidden states are not its first input and output"
    for i in range(1, len(layers)):
        if seen[i][0] is not outs[i - 1]:
            return f"layer {i} does not take layer {i - 1}'s output"
    if any(t.requires_grad for _, others in seen for t in others):
        return "a layer input besides the hidden states depends on a scored weight"
    stack = {id(p) for p in layers.parameters()}
    inside = [p for p in wanted.values() if id(p) in stack]
    if logits.requires_grad and inside:
        grads = torch.autograd.grad(logits.sum(), inside, allow_unused=True)
        if any(g is not None for g in grads):
            return "what follows the stack reads a layer before the last"
    return None


def layerwise_gradients(
    model: nn.Module,
    samples: Sequence[torch.Tensor],
    wanted: dict[str, nn.Parameter],
    grads: dict[str, torch.Tensor],
    on_layer: Callable[[list[str]], None],
    progress: bool = True,
    keep_bytes: int = 0,
) -> str | None:
    """Sum the calibration gradients of the ``wanted`` weights into ``grads`` as means, one layer at a time.

    The post-accumulate-grad hooks of :func:`.signals.collect_signals` must be in place (they fold
    each backward's ``.grad`` into ``grads``).  ``on_layer(names)`` is called once the gradients of
    one layer's wanted weights are complete (every wanted weight of it has one, zero if it got none);
    the rest come at the end, and ``on_layer`` is not called for them.  Returns why the model does
    not qualify (and does nothing), or ``None`` when done.

    ``keep_bytes``: memory for activations kept from the forward pass.  The first layers whose
    activations fit in it (what autograd saves for them, measured on the first micro-batch and
    projected to all) run that pass with autograd and are differentiated from it; the others run
    forward again, one at a time, when their turn comes (one more forward pass of each).
    """
    found = layer_stack(model)
    if found is None:
        return "no stack of decoder layers"
    path, layers = found
    device = next(model.parameters()).device
    samples = [ids.to(device) for ids in samples]  # (1, T) each
    problem = chain_problem(model, layers, wanted, samples[0][:, :4])
    if problem is not None:
        return problem
    n_layers, n = len(layers), len(samples)
    batches = micro_batches(samples)  # (b, T) each: samples of one length, side by side
    tokens = sum(b.numel() for b in batches)
    kept: list[list[tuple]] = [[] for _ in range(n_layers)]  # per layer, per batch: (hidden, rebuild)
    graphs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]  # per kept layer, per batch: its output, with autograd
    leaf: list[torch.Tensor] = []
    keeping = _Keeping(keep_bytes, tokens / batches[0].numel(), n_layers, model.parameters())

    def keep(index: int):
        def pre(mod, args, kwargs):
            h, rebuild = _hidden_in(args, kwargs)
            hidden = h.detach().clone()  # (b, T, hidden); the other inputs by reference
            kept[index].append((hidden, rebuild))
            if index < keeping.layers:  # differentiate this layer from this pass
                torch.set_grad_enabled(True)  # (restored by the forward hook, or by no_grad's exit)
                keeping.start()
                return rebuild(hidden.requires_grad_(True))
            return None

        def post(mod, args, kwargs, out):
            if index >= keeping.layers:
                return None
            h, put = _hidden_out(out)
            if keeping.stop(index):
                graphs[index].append(h)
            torch.set_grad_enabled(False)
            return put(h.detach())

        return pre, post

    def cut(mod, args, kwargs, out):
        h, put = _hidden_out(out)
        leaf.append(h.detach().requires_grad_(True))
        torch.set_grad_enabled(True)  # differentiate what follows the stack (restored by no_grad's exit)
        return put(leaf[-1])

    hooks = []
    for i, m in enumerate(layers):
        pre, post = keep(i)
        hooks += [m.register_forward_pre_hook(pre, with_kwargs=True), m.register_forward_hook(post, with_kwargs=True)]
    hooks.append(layers[-1].register_forward_hook(cut, with_kwargs=True))
    upstream: list[torch.Tensor] = []
    try:
        for ids in tqdm(batches, desc="calibration (forward)", disable=not progress, leave=False):
            with torch.no_grad():
                loss = _loss(_logits(model, ids), ids)
            loss.backward()  # the LM head and final norm; the gradient of the last layer's output
            upstream.append(leaf.pop().grad)  # (b, T, hidden)
            keeping.measured = True
    finally:
        keeping.close()
        for h in hooks:
            h.remove()
    names = {id(p): n for n, p in wanted.items()}
    for i in tqdm(range(n_layers - 1, -1, -1), desc="calibration (layers)", disable=not progress, leave=False):
        layer = layers[i]
        for s in range(len(batches)):
            hidden, rebuild = kept[i][s]
            kept[i][s] = None
            if i < keeping.layers:  # differentiated from the forward pass
                out = graphs[i][s]
                graphs[i][s] = None
            else:  # run forward again
                hidden.requires_grad_(True)
                args, kwargs = rebuild(hidden)
                with torch.enable_grad():
                    out, _ = _hidden_out(layer(*args, **kwargs))
            torch.autograd.backward(out, upstream[s])
            del out
            upstream[s] = hidden.grad  # the gradient of layer i - 1's output
        done = [names[id(p)] for p in layer.parameters() if id(p) in names]
        for name in done:
            if name in grads:
                grads[name].div_(n)
            else:
                grads[name] = torch.zeros(wanted[name].shape, dtype=torch.float32, device=device)
        on_layer(done)
    inside = {id(p) for p in layers.parameters()}
    if any(id(p) not in inside for p in wanted.values()):
        _before_stack(model, layers[0], batches, upstream)
    for name, p in wanted.items():
        if id(p) not in inside and name in grads:
            grads[name].div_(n)
    return None


class _Keeping:
    """Which first layers keep their autograd activations from the forward pass, within ``budget`` bytes.

    On the first micro-batch each layer's saved tensors (parameters aside) are counted as it runs
    (``saved_tensors_hooks``) and projected to every micro-batch (``scale``: all tokens over the
    first batch's); the first layer that would overflow the budget, and every layer after it, are
    run again in the backward pass instead.  ``layers`` is how many layers keep theirs.
    """

    def __init__(self, budget: int, scale: float, n_layers: int, params: Iterable[torch.Tensor]):
        self.budget, self.scale = budget, scale
        self._params = {p.untyped_storage().data_ptr() for p in params} if budget > 0 else set()  # weights: saved, not kept
        self.layers = n_layers if budget > 0 else 0
        self.measured = False  # the first micro-batch has run: ``layers`` is settled
        self.used = 0.0
        self._counting: torch.autograd.graph.saved_tensors_hooks | None = None
        self._storages: dict[int, int] = {}

    def start(self) -> None:
        if self.measured:
            return
        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in self._params:
                self._storages[storage.data_ptr()] = storage.nbytes()
            return t

        self._storages = {}
        self._counting = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._counting.__enter__()

    def stop(self, index: int) -> bool:
        """Whether layer ``index``'s activations are kept (on the first micro-batch: whether they fit)."""
        if self.measured:
            return True
        self.close()
        self.used += sum(self._storages.values()) * self.scale
        if self.used > self.budget:
            self.layers = index  # this layer and the ones after it run again
            return False
        return True

    def close(self) -> None:
        if self._counting is not None:
            self._counting.__exit__(None, None, None)
            self._counting = None


def _before_stack(model: nn.Module, first: nn.Module, samples: list[torch.Tensor], upstream: list[torch.Tensor]) -> None:
    """Back-propagate the first layer's input gradients into what precedes the stack (the embeddings)."""
    reached: list[torch.Tensor] = []

    def stop(mod, args, kwargs):
        reached.append(_hidden_in(args, kwargs)[0])
        raise _Stop

    hook = first.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        for ids, grad in zip(samples, upstream):
            with torch.enable_grad():
                try:
                    _logits(model, ids)
                except _Stop:
                    pass
            h = reached.pop()
            if h.requires_grad:
                torch.autograd.backward(h, grad)
    finally:
        hook.remove()


__all__ = ["chain_problem", "layerwise_gradients"]
