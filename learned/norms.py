"""Norms over the hidden width, made to compute after slicing what they computed on the gated model.

A gated model removes a hidden channel by zeroing it; its RMSNorms still average over the full
width ``D``.  Sliced to ``D'`` channels, they average over ``D'``: every normalised value grows by
about ``sqrt(D / D')`` and the sliced model is not the one the gates were trained as.  Folding the
difference into the norm's weight makes it so again: the output of a norm is affine in its weight
(``w * n(x)`` for Llama's RMSNorm, ``(1 + w) * n(x)`` for Gemma's), so the weight that reproduces
the gated output is solved from the module itself, whatever its formula, then checked.  A norm
that subtracts the mean (LayerNorm) cannot be matched by any weight and is refused before training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from depgraph.groups import Group
from pruners import DeppruneError

TOLERANCE = 1e-4  # relative; the only mismatch left is epsilon's share of the mean square


class UnmatchableNormError(DeppruneError, ValueError):
    """A norm over the hidden width whose sliced output no weight can make equal to the gated one."""


def hidden_norms(model: nn.Module, groups: Sequence[Group]) -> dict[str, tuple[str, np.ndarray]]:
    """The modules of ``model`` normalising over the hidden width: module name -> (group id, ``unit_of`` of its weight).

    They are the owners of a 1-D ``weight`` member of a ``hidden_channel`` group that are neither
    linear layers nor embeddings.
    """
    out = {}
    for g in groups:
        if g.kind != "hidden_channel":
            continue
        for m in g.members:
            path, _, attr = m.param.rpartition(".")
            if attr != "weight" or len(m.shape) != 1:
                continue
            module = model.get_submodule(path)
            if not isinstance(module, nn.Linear | nn.Embedding):
                out[path] = (g.id, np.asarray(m.unit_of))
    return out


def kept_positions(unit_of: np.ndarray, kept_units) -> torch.Tensor:
    """The positions of an axis that stay when only ``kept_units`` of its group stay (positions of no unit always do)."""
    return torch.as_tensor(np.flatnonzero((unit_of < 0) | np.isin(unit_of, list(kept_units))))


def _probe(width: int, kept: torch.Tensor, rows: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)  # (rows, D)
    out = torch.zeros_like(x)
    out[:, kept] = x[:, kept]  # the removed channels are zero in the gated model
    return out.to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def match_norm(dense: nn.Module, sliced: nn.Module, kept: torch.Tensor, name: str = "norm") -> float:
    """Set ``sliced.weight`` so that ``sliced(x[..., kept]) == dense(x)[..., kept]`` for ``x`` zero off ``kept``.

    Returns the largest relative mismatch left on fresh inputs; raises
    :class:`UnmatchableNormError` when it exceeds ``TOLERANCE``.
    """
    w = sliced.weight
    width = dense.weight.shape[0]
    x = _probe(width, kept, 64, 0, w)  # (64, D)
    target = dense(x)[:, kept].float()  # (64, D')
    saved = w.detach().clone()
    w.zero_()
    a = sliced(x[:, kept]).float()  # the output with weight 0   (64, D')
    w.fill_(1.0)
    b = sliced(x[:, kept]).float() - a  # and its slope in the weight   (64, D')
    solved = ((b * (target - a)).sum(0) / (b * b).sum(0).clamp_min(1e-30))  # least squares per channel   (D',)
    w.copy_(solved.to(w.dtype))
    check = _probe(width, kept, 64, 1, w)
    want, got = dense(check)[:, kept].float(), sliced(check[:, kept]).float()
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
    if error > TOLERANCE:
        w.copy_(saved)
        raise UnmatchableNormError(
            f"{name} ({type(dense).__name__}) normalises over the hidden width in a way no weight can carry to the "
            f"sliced model (relative error {error:.2e}; it subtracts the mean?): leave hidden_channel out of --kinds"
        )
    return error


def check_matchable(model: nn.Module, groups: Sequence[Group]) -> None:
    """Refuse, before training, a model with a hidden-width norm :func:`match_norm` cannot carry (e.g. LayerNorm)."""
    import copy

    for name, (_, unit_of) in hidden_norms(model, groups).items():
        module = model.get_submodule(name)
        dense = copy.deepcopy(module).float()
        kept = kept_positions(unit_of, range(0, int(unit_of.max()) + 1, 2))  # every other unit
        sliced = copy.deepcopy(dense)
        sliced.weight = nn.Parameter(dense.weight.detach()[kept].clone())
        if hasattr(sliced, "normalized_shape"):
            sliced.normalized_shape = (len(kept),)
        if getattr(sliced, "bias", None) is not None:
            sliced.bias = nn.Parameter(dense.bias.detach()[kept].clone())
        match_norm(dense, sliced, kept, name)


def match_hidden_norms(dense: nn.Module, sliced: nn.Module, groups: Sequence[Group], keep: dict[str, list[int]]) -> dict:
    """Match every hidden-width norm of ``sliced`` (the sliced ``dense``) to ``dense`` under the hidden plan ``keep``.

    Returns ``{module name: relative mismatch}`` (empty when no hidden channel is removed).
    """
    hidden = [g for g in groups if g.kind == "hidden_channel" and g.id in keep and len(keep[g.id]) < g.n_units]
    if not hidden:
        return {}
    errors = {}
    for name, (gid, unit_of) in hidden_norms(dense, hidden).items():
        kept = kept_positions(unit_of, keep[gid])
        errors[name] = match_norm(dense.get_submodule(name), sliced.get_submodule(name), kept, name)
    return errors
