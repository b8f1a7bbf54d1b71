"""Give a Hugging Face model the tensor and attribute sizes recorded in its config (per-layer pruned sizes).

This module is the body of the ``modeling_depprune.py`` that depprune writes into a pruned
model's directory when no config field of the architecture expresses the pruned sizes (layers
keeping different numbers of heads or channels, or a head count the config derives from the
hidden size).  It imports only torch and transformers: copied into the directory, below a few
generated lines naming the source architecture's classes, it lets
``AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)`` (and vLLM's Transformers
backend) build the pruned model with no depprune installed.

How: the source architecture is built from the global config (the unpruned sizes; on the meta
device when transformers loads weights), then every recorded tensor is replaced by an empty one
of its pruned shape and every recorded module attribute (``in_features``, ``num_heads``, ...)
is set; the weights are loaded afterwards.  ``config.depprune["sizes"]`` holds the record:
``{"shapes": {tensor: shape}, "attributes": [[module, attribute, value], ...]}`` where an
attribute ``config.X`` gives that module its own copy of the config with ``X`` changed.
``config.per_layer_config`` (transformers' standard per-layer schema) describes the same layers
for other tools; the sizes here do not depend on it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.utils import logging


def resize_to_record(model: nn.Module, sizes: dict, prefix: str = "") -> None:
    """Give ``model`` the recorded tensor shapes and module attributes (names under ``prefix``, which is stripped).

    Tied parameters (one ``Parameter`` under several names) stay tied.  The new tensors are
    uninitialised (``torch.empty``, on the device and in the dtype of the tensors they replace):
    loading the weights fills them.

    >>> lin = nn.Linear(4, 3)
    >>> resize_to_record(lin, {"shapes": {"weight": [2, 4], "bias": [2]}, "attributes": [["", "out_features", 2]]})
    >>> lin.weight.shape, lin.out_features
    (torch.Size([2, 4]), 2)
    """
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    for name, shape in sizes["shapes"].items():
        if not name.startswith(prefix):
            continue
        module, attr = _owner(model, name[len(prefix) :])
        old = getattr(module, attr)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
            for alias in aliases.get(id(old), [name[len(prefix) :]]):
                owner, alias_attr = _owner(model, alias)
                setattr(owner, alias_attr, new)
        else:
            module._buffers[attr] = new
    own_configs: dict[str, object] = {}
    for path, attr, value in sizes["attributes"]:
        if prefix:
            if not (path + ".").startswith(prefix):
                continue
            path = path[len(prefix) :]
        module = model.get_submodule(path) if path else model
        value = tuple(value) if isinstance(value, list) else value  # normalized_shape: a tuple, in JSON a list
        if attr.startswith("config."):
            if path not in own_configs:
                own_configs[path] = copy.copy(module.config)
                module.config = own_configs[path]
            setattr(module.config, attr[len("config.") :], value)
        else:
            setattr(module, attr, value)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding the tensor ``name`` (``layers.0.mlp.up_proj.weight``) and its attribute name."""
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


class SizedConfigMixin:
    """The source architecture's config, reading per-layer fields globally while the source classes build.

    The global fields keep the unpruned sizes the source architecture is built with; the pruned
    ones are in ``per_layer_config`` and in ``depprune["sizes"]``.
    """

    def __post_init__(self, **kwargs):
        self.allow_global_per_layer_attribute_access = True
        super().__post_init__(**kwargs)


class SizedModelMixin:
    """Build the source architecture, then give it the recorded pruned sizes (see :func:`resize_to_record`).

    The recorded names are those of the causal LM; the base model (``AutoModel``, as vLLM
    loads it) takes the ones under its ``base_model_prefix``.
    """

    def __init__(self, config, *args, **kwargs):
        log = logging.get_logger("transformers.integrations.heterogeneity.configuration_utils")
        level = log.level
        log.setLevel(logging.ERROR)  # the source classes read the global (unpruned) sizes on purpose: no warning
        try:
            super().__init__(config, *args, **kwargs)
        finally:
            log.setLevel(level)
        sizes = config.depprune["sizes"]
        is_base = getattr(self, "base_model_prefix", "") and self.base_model is self
        resize_to_record(self, sizes, f"{self.base_model_prefix}." if is_base else "")
        self.post_init()  # initialise (when not loading) and tie the resized weights
