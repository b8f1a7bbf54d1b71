"""LoRA adapters through peft: added to a pruned model (each sized from its own layer), merged back at the end.

A pruned model's layers may differ in size (one layer keeps 3 KV groups, the next 2); peft
builds every adapter from the wrapped layer's own ``in_features``/``out_features``, which
:func:`add_adapters` checks layer by layer rather than trusting.  Adapters are added in place:
the frozen base weights are never copied.
"""

from __future__ import annotations

import torch
from torch import nn

from pruners.errors import UsageError

from .config import LoraOptions

ADAPTER = "default"  # peft's name for the one adapter


def add_adapters(model: nn.Module, options: LoraOptions, seed: int = 0):
    """``model`` wrapped in a peft ``PeftModel`` with LoRA on ``options.target_modules``, base weights frozen.

    The adapters' initialisation (A random, B zero: the wrapped model equals ``model``) is fixed
    by ``seed``.  Raises UsageError when no module matches the targets, and RuntimeError if an
    adapter's sizes differ from its layer's.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, bias="none",
        target_modules=options.target_modules, task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):  # the init draws from its own seed, not the caller's stream
        torch.manual_seed(seed)
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            raise UsageError(f"lora.target_modules {options.target_modules!r}: {e}".splitlines()[0]) from e
    check_adapter_sizes(wrapped)
    return wrapped


def adapted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of ``model`` by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def check_adapter_sizes(model: nn.Module) -> None:
    """Every adapter maps its own layer's input width to its output width (``A: in -> r``, ``B: r -> out``)."""
    layers = adapted_layers(model)
    if not layers:
        raise UsageError("LoRA found no layer to adapt; set lora.target_modules to module-name suffixes such as [q_proj, v_proj]")
    for name, layer in layers.items():
        base = layer.get_base_layer()
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight  # (r, in), (out, r)
        fan_in, fan_out = layer.in_features, layer.out_features
        weight = base.weight  # (out, in) for Linear; (in, out) for transformers' Conv1D
        expected = (fan_out, fan_in) if isinstance(base, nn.Linear) else (fan_in, fan_out)
        if tuple(weight.shape) != expected or a.shape[1] != fan_in or b.shape[0] != fan_out:
            raise RuntimeError(
                f"LoRA adapter of {name} is {tuple(a.shape)} / {tuple(b.shape)} but the layer's weight is "
                f"{tuple(weight.shape)}: peft sized it from something other than the layer"
            )


def merge_adapters(model) -> nn.Module:
    """The base model with every adapter merged into its weights (``W + (alpha / r) B A``): a plain dense model."""
    return model.merge_and_unload()


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors as peft saves them (``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
