"""The modeling code written beside a pruned model whose sizes no config field expresses.

When the pruned sizes differ per layer (a global plan), or are uniform but not expressible by
the architecture's config (GPT-2 derives a head's size from ``n_embd // n_head``), plain
transformers cannot build the model from ``config.json`` alone.  The output directory then gets

- ``modeling_depprune.py``: :mod:`pruners.slicing.sized_modeling` (torch and transformers only) and
  three generated classes, subclasses of the source architecture's config, base model and
  causal LM, with their own ``model_type`` (``depprune_<source>``), so that no tool mistakes the
  directory for an unpruned model of the source architecture;
- in ``config.json``: that ``model_type``, ``architectures``, an ``auto_map`` for
  ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``, and under ``depprune.sizes`` every
  pruned tensor's shape and every module attribute that differs from the source architecture
  (found by comparing with it, built on the meta device).

It opens with ``AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)``.  depprune
itself never runs that file: :func:`pruners.io.checkpoint.load_model` builds the source
architecture and applies the record.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..slicing import sized_modeling
from ..slicing.executor import PruneRecord

MODELING_FILE = "modeling_depprune.py"
MODEL_TYPE_PREFIX = "depprune_"


def size_attributes(model: nn.Module) -> dict[tuple[str, str], object]:
    """Every int (or tuple of ints) attribute of every module, and of a module's own config copy, by (path, name).

    ``config.X`` is listed for a module whose ``config`` is not the model's own (a copy the
    executor gave it to change ``X``).

    >>> size_attributes(nn.Sequential(nn.Linear(3, 2)))[("0", "in_features")]
    3
    """
    top = getattr(model, "config", None)
    out: dict[tuple[str, str], object] = {}
    for path, mod in model.named_modules():
        for k, v in vars(mod).items():
            if not k.startswith("_") and _is_size(v):
                out[(path, k)] = v
        cfg = getattr(mod, "config", None)
        if cfg is not None and cfg is not top and not isinstance(cfg, nn.Module) and hasattr(cfg, "to_dict"):
            for k, v in vars(cfg).items():
                if not k.startswith("_") and type(v) is int:
                    out[(path, f"config.{k}")] = v
    return out


def _is_size(v) -> bool:
    return type(v) is int or (isinstance(v, tuple) and bool(v) and all(type(x) is int for x in v))


def recorded_sizes(model: nn.Module, record: PruneRecord) -> dict:
    """``{"shapes": ..., "attributes": ...}``: what :func:`pruners.slicing.sized_modeling.resize_to_record` needs.

    The attributes are those where ``model`` differs from its architecture built from its
    config (on meta): the executor's inferred ones and the shape adapters' (``in_features``).
    A tied weight is listed under each of its names.
    """
    with torch.device("meta"):
        source = type(model)(copy.deepcopy(model.config))
    before = size_attributes(source)
    after = size_attributes(model)

    def old(path: str, attr: str):
        if (path, attr) in before:
            return before[path, attr]
        if attr.startswith("config."):  # a config copy the source module shares with the model
            return getattr(getattr(source.get_submodule(path), "config", None), attr[len("config.") :], None)
        return None

    changed = sorted((path, attr) for (path, attr), v in after.items() if old(path, attr) != v)
    attributes = [[path, attr, list(after[path, attr]) if isinstance(after[path, attr], tuple) else after[path, attr]]
                  for path, attr in changed]
    names: dict[int, list[str]] = {}  # tied weights under every name: the source may build them untied
    for name, prm in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(prm), []).append(name)
    params = dict(model.named_parameters(remove_duplicate=False))
    shapes = dict(record.shapes)
    for name, shape in record.shapes.items():
        if name in params:
            shapes.update(dict.fromkeys(names[id(params[name])], shape))
    return {"shapes": dict(sorted(shapes.items())), "attributes": attributes}


def source_classes(model: nn.Module) -> tuple[type, type, type] | None:
    """The source architecture's config, base model and causal LM classes, when transformers ships them."""
    classes = (type(model.config), type(model.base_model), type(model))
    if all(c.__module__.startswith("transformers.") for c in classes) and model.base_model is not model:
        return classes
    return None


def modeling_code(model: nn.Module) -> tuple[str, dict] | None:
    """The text of ``modeling_depprune.py`` for ``model``'s architecture and the ``config.json`` fields that use it.

    None when the architecture is not one transformers ships (a model that itself needs remote
    code): then only depprune's own loader opens the output.
    """
    classes = source_classes(model)
    if classes is None:
        return None
    config_cls, base_cls, lm_cls = classes
    names = [f"Depprune{c.__name__}" for c in classes]
    model_type = MODEL_TYPE_PREFIX + model.config.model_type
    body = Path(sized_modeling.__file__).read_text(encoding="utf-8")
    imports = "".join(f"from {c.__module__} import {c.__name__}  # noqa: E402\n" for c in classes)
    generated = (
        f"\n\n# -- generated by depprune: the pruned {model.config.model_type} architecture --------------\n\n"
        f"{imports}\n\n"
        f"class {names[0]}(SizedConfigMixin, {config_cls.__name__}):\n"
        f"    model_type = {model_type!r}\n\n\n"
        f"class {names[1]}(SizedModelMixin, {base_cls.__name__}):\n"
        f"    config_class = {names[0]}\n\n\n"
        f"class {names[2]}(SizedModelMixin, {lm_cls.__name__}):\n"
        f"    config_class = {names[0]}\n"
    )
    stem = MODELING_FILE.removesuffix(".py")
    fields = {
        "model_type": model_type,
        "architectures": [names[2]],
        "auto_map": {
            "AutoConfig": f"{stem}.{names[0]}",
            "AutoModel": f"{stem}.{names[1]}",
            "AutoModelForCausalLM": f"{stem}.{names[2]}",
        },
    }
    return body + generated, fields
