"""The traced groups moved onto a model that peft has given LoRA adapters, so that a gate scales a unit's adapters too.

A LoRA layer computes ``(W + s B A) x``.  Gating only ``W`` would let ``s B A`` keep a removed
unit alive, and the exported model (adapters merged, then sliced) would differ from the trained
one.  A unit owning rows of ``W`` (axis 0) owns the same rows of ``B``; one owning columns of
``W`` (axis 1) the same columns of ``A`` -- gating both factors gates ``W + s B A`` exactly::

    g * W + s (g * B) A = g * (W + s B A)        W g + s B (A g) = (W + s B A) g

:func:`adapted_groups` renames every member to its place in the adapted model
(``q_proj.weight`` -> ``q_proj.base_layer.weight``) and adds the adapter members;
:func:`pruners.attach_gate_source` then gates the adapted model as it gates a plain one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from depgraph.groups import Group, Member

ADAPTER = "default"  # peft's name for the one adapter


def adapted_groups(model: nn.Module, groups: Sequence[Group]) -> list[Group]:
    """``groups`` with member names in ``model`` (the base model inside a peft ``PeftModel``) and its LoRA factors added.

    ``model`` is ``peft_model.get_base_model()``: the original module tree with LoRA layers in
    place of the adapted linear layers.  A member of a module peft did not adapt (embeddings,
    norms, the LM head) keeps its name.
    """
    out = []
    for g in groups:
        members: list[Member] = []
        for m in g.members:
            path, _, attr = m.param.rpartition(".")
            module = model.get_submodule(path) if path else model
            base = getattr(module, "base_layer", None)
            if base is None or not hasattr(module, "lora_A"):
                members.append(m)
                continue
            members.append(replace(m, param=f"{path}.base_layer.{attr}"))
            if attr != "weight" or ADAPTER not in module.lora_A:
                continue
            if not isinstance(base, nn.Linear) or m.axis not in (0, 1):
                raise ValueError(f"group {g.id}: cannot gate the LoRA adapter of {path} ({type(base).__name__}, axis {m.axis})")
            if m.axis == 0:  # output rows: B is (out, r)
                b = module.lora_B[ADAPTER].weight
                members.append(Member(f"{path}.lora_B.{ADAPTER}.weight", 0, m.unit_of, shape=tuple(b.shape)))
            else:  # input columns: A is (r, in)
                a = module.lora_A[ADAPTER].weight
                members.append(Member(f"{path}.lora_A.{ADAPTER}.weight", 1, m.unit_of, shape=tuple(a.shape)))
        out.append(replace(g, members=members))
    return out
