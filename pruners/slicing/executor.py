"""The executor: physically remove the selected units of each group from a copy of the model.

Parameters, biases, norm weights and buffers are sliced along every member axis; module
attributes that carry sizes are updated (see :mod:`pruners.slicing.attributes`); the result is
re-traced and its layouts compared with the expected ones, so a wrong attribute update
can never pass silently.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from depgraph.graph import term_key
from depgraph.groups import Group
from depgraph.layout import factors as _factors
from depgraph.tracer import meta_copy

from ..errors import PlanError
from .attributes import apply_shape_adapters, infer_attributes
from .hf_config import hf_config_update
from .layer_config import per_layer_update


@dataclass
class PruneRecord:
    """What the executor changed: enough to rebuild the pruned model from the original config."""

    shapes: dict[str, list[int]] = field(default_factory=dict)
    attributes: list[tuple[str, str, object]] = field(default_factory=list)  # (module path, attr, value)
    kept: dict[str, list[int]] = field(default_factory=dict)  # group id -> kept units
    config: dict[str, int] | None = None  # top-level config fields that rebuild the pruned model, if any
    # otherwise, when each decoder layer is an ordinary one with some fields changed:
    # {"global": fields every layer needs, "layers": {"i": fields}} (transformers' per_layer_config)
    per_layer: dict | None = None

    def to_dict(self) -> dict:
        return {
            "shapes": self.shapes,
            "attributes": [[m, a, v] for m, a, v in self.attributes],
            "kept": self.kept,
            "config": self.config,
            "per_layer": self.per_layer,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PruneRecord:
        """The record :meth:`to_dict` wrote (e.g. read back from a saved ``config.json``)."""
        return cls(
            shapes={k: list(v) for k, v in d["shapes"].items()},
            attributes=[(m, a, v) for m, a, v in d["attributes"]],
            kept={k: list(v) for k, v in d["kept"].items()},
            config=d.get("config"),
            per_layer=d.get("per_layer"),
        )


def validate_keep(groups: Sequence[Group], keep: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Check a plan against the groups; return sorted unique kept units per group id."""
    by_id = {g.id: g for g in groups}
    out: dict[str, np.ndarray] = {}
    for gid, units in keep.items():
        if gid not in by_id:
            raise PlanError(f"unknown group {gid!r}; valid ids are e.g. {sorted(by_id)[:6]}")
        g = by_id[gid]
        u = np.unique(np.asarray(list(units), dtype=np.int64))
        if len(u) == 0:
            where = f"layer {g.layer}" if g.layer is not None else "the model"
            raise PlanError(f"the plan removes every {g.kind} unit of {where} (group {gid}); keep at least one")
        if u.min() < 0 or u.max() >= g.n_units:
            raise PlanError(f"group {gid} has units 0..{g.n_units - 1}; got {u.min()}..{u.max()}")
        if g.blocked:
            blocks = np.bincount(u // g.units_per_block, minlength=g.blocks)
            live = blocks[blocks > 0]
            if len(set(live.tolist())) > 1:
                raise PlanError(
                    f"group {gid}: query heads must be kept in equal numbers per KV group, got {blocks.tolist()}"
                )
        out[gid] = u
    return out


def kept_positions(groups: Sequence[Group], keep: Mapping[str, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """For each (parameter or buffer, axis) touched by the plan: the positions that stay."""
    masks: dict[tuple[str, int], np.ndarray] = {}
    for g in groups:
        if g.id not in keep:
            continue
        kept = keep[g.id]
        for m in g.members:
            key = (m.param, m.axis)
            mask = (m.unit_of < 0) | np.isin(m.unit_of, kept)
            masks[key] = masks[key] & mask if key in masks else mask
    return {k: np.flatnonzero(v) for k, v in masks.items() if not v.all()}


def owner_and_attr(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module owning the tensor at ``path`` (e.g. ``model.layers.0.mlp.up_proj.weight``) and its attribute name."""
    mod_path, _, attr = path.rpartition(".")
    mod = model.get_submodule(mod_path) if mod_path else model
    return mod, attr


def slice_tensors(
    model: nn.Module,
    positions: Mapping[tuple[str, int], np.ndarray],
    aliases: Mapping[str, list[str]],
    source: nn.Module | None = None,
) -> dict[str, list[int]]:
    """Give ``model`` the slices of ``source``'s tensors (``model``'s own by default: in place); tied parameters stay tied.

    A tensor cut on both axes of a matrix is gathered in one pass (one new tensor, not two).
    """
    source = model if source is None else source
    by_name: dict[str, list[tuple[int, np.ndarray]]] = {}
    for (name, axis), pos in positions.items():
        by_name.setdefault(name, []).append((axis, pos))
    shapes: dict[str, list[int]] = {}
    for name, cuts in sorted(by_name.items()):
        smod, attr = owner_and_attr(source, name)
        old = getattr(smod, attr)
        data = old.data
        index = {axis: torch.as_tensor(pos, device=data.device) for axis, pos in cuts}
        if data.ndim == 2 and len(index) == 2:
            data = data[index[0][:, None], index[1]]  # (rows kept, columns kept), gathered at once
        else:
            for axis, idx in index.items():
                data = data.index_select(axis, idx)
        data = data.contiguous()
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(data, requires_grad=old.requires_grad)
            for alias in aliases.get(name, [name]):
                amod, aattr = owner_and_attr(model, alias)
                setattr(amod, aattr, new)
        else:
            owner_and_attr(model, name)[0]._buffers[attr] = data
        shapes[name] = list(data.shape)
    return shapes


def copy_unsliced(pruned: nn.Module, model: nn.Module, sliced: set[str]) -> None:
    """Give ``pruned`` (a :func:`~depgraph.tracer.meta_copy` of ``model``) copies of every tensor not in ``sliced``.

    ``sliced`` names every alias of a sliced tensor.  Tied parameters stay tied.
    """
    clones: dict[int, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name not in sliced:
            if id(p) not in clones:
                clones[id(p)] = nn.Parameter(p.data.clone(), requires_grad=p.requires_grad)
            mod, attr = owner_and_attr(pruned, name)
            setattr(mod, attr, clones[id(p)])
    for name, b in model.named_buffers(remove_duplicate=False):
        if name not in sliced:
            mod, attr = owner_and_attr(pruned, name)
            mod._buffers[attr] = clones.setdefault(id(b), b.clone())


def new_factor_sizes(groups: Sequence[Group], keep: Mapping[str, np.ndarray], factor_by_key: Mapping) -> dict:
    """Factor -> size after pruning, for every factor of a planned group."""
    out: dict = {}
    for g in groups:
        if g.id not in keep:
            continue
        kept = keep[g.id]
        fs = [factor_by_key[k] for k in g.factors]
        if len(fs) == 1:
            out[fs[0]] = len(kept)
            continue
        per_block = g.units_per_block or 1
        reps = [f for f in fs if f.size != 1][-1:]
        blocks = np.unique(kept // per_block)
        out[fs[0]] = min(out.get(fs[0], len(blocks)), len(blocks))
        if reps:
            out[reps[0]] = len(kept) // len(blocks)
    return out


def execute(model: nn.Module, trace, groups: Sequence[Group], keep: Mapping[str, Sequence[int]],
            inplace: bool = False) -> tuple[nn.Module, PruneRecord]:
    """Return a pruned copy of ``model`` keeping ``keep[group_id]`` units of each planned group.

    ``trace`` and ``groups`` come from tracing a model with the same structure (a meta copy is
    fine).  The input model is not modified, unless ``inplace``: then it is sliced and returned
    itself (each tensor replaced by its slice, so no second copy of the weights is ever held).
    """
    kept = validate_keep(groups, keep)
    positions = kept_positions(groups, kept)
    if inplace:
        pruned = model
        shapes = slice_tensors(pruned, positions, trace.aliases)
    else:  # the structure copied without its weights, then filled: never a second full copy of them
        pruned = meta_copy(model)
        shapes = slice_tensors(pruned, positions, trace.aliases, source=model)
        copy_unsliced(pruned, model, {alias for n in shapes for alias in trace.aliases.get(n, [n])})
    fixed = apply_shape_adapters(pruned, [alias for n in shapes for alias in trace.aliases.get(n, [n])])
    factor_by_key = {term_key(f): f for info in trace.params.values() for t in info.axes for f in _factors(t)}
    new_size = new_factor_sizes(groups, kept, factor_by_key)
    attrs = infer_attributes(pruned, trace, new_size, fixed)
    record = PruneRecord(
        shapes=shapes,
        attributes=attrs,
        kept={k: v.tolist() for k, v in kept.items()},
        config=hf_config_update(pruned, trace, new_size),
    )
    if not record.config:
        record.per_layer = per_layer_update(pruned, trace, new_size)
    if record.config:  # the pruned model's own config tells the truth about its sizes
        pruned.config = copy.deepcopy(pruned.config)
        for k, v in record.config.items():
            setattr(pruned.config, k, v)
    return pruned, record
