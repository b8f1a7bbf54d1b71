"""Loading models and saving/loading pruned ones.

A pruned model is saved as a Hugging Face directory (safetensors weights, ``config.json``,
tokenizer files copied from the source) whose config keeps the source architecture's fields
and adds a ``depprune`` section: every pruned tensor's shape and every size attribute the
executor changed.  :func:`load_model` rebuilds the architecture on the meta device, applies
that record and loads the weights -- per-layer sizes survive the round trip.  Writing goes to
a temporary directory renamed into place, so a failure never leaves a partial output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import ModelSourceError
from .executor import PruneRecord, _get

FORMAT = 1
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
BUFFER_FILE = "depprune_buffers.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_dir(path: str | os.PathLike, weights: bool = True) -> Path:
    """A directory with a ``config.json``, or a clear error naming what is wrong.

    A Hugging Face hub id (``org/name``) that is not a local path is downloaded to the hub
    cache first (config and tokenizer only when ``weights`` is false).
    """
    p = Path(path)
    if not p.exists() and HUB_ID.match(str(path)):
        return _from_hub(str(path), weights)
    if not p.exists():
        raise ModelSourceError(f"model directory {str(path)!r} does not exist")
    if not p.is_dir():
        raise ModelSourceError(f"model path {str(path)!r} is not a directory")
    if not (p / "config.json").is_file():
        raise ModelSourceError(f"{str(path)!r} is not a model directory: it has no config.json")
    return p


def _from_hub(repo_id: str, weights: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "tokenizer*", "*.model", "*.txt"] + (["*.safetensors"] if weights else [])
    try:
        return check_model_dir(snapshot_download(repo_id, allow_patterns=patterns))
    except ModelSourceError:
        raise
    except Exception as e:  # offline, unknown repo, gated repo ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSourceError(
            f"{repo_id!r} is not a local directory and could not be fetched from the Hugging Face hub ({first})"
        ) from e


def has_weights(path: Path) -> bool:
    return any((path / f).exists() for f in WEIGHT_FILES)


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelSourceError(f"{path / 'config.json'} is not valid JSON: {e}") from e


def load_model(
    path: str | os.PathLike, device: str = "cpu", weights: bool = True, attn_implementation: str | None = None
) -> nn.Module:
    """Load a causal LM from a directory (plain HF or depprune output) in fp32, in eval mode.

    With ``weights=False`` or a directory holding only ``config.json``, the model is built on
    the meta device: nothing is allocated, so any size can be inspected.  ``attn_implementation``
    (``"eager"``, ``"sdpa"``) is passed to transformers, which does not store it in the config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    p = check_model_dir(path, weights)
    raw = _read_config(p)
    try:
        config = AutoConfig.from_pretrained(p)
    except Exception as e:
        raise ModelSourceError(f"{str(path)!r}: transformers cannot read its config: {e}") from e
    load_weights = weights and has_weights(p)
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if "depprune" in raw or not load_weights:
        # weights come later: build on meta, or on the device when non-persistent buffers
        # (rotary inv_freq) must be computed for real
        with torch.device(device if load_weights else "meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **attn)
        if "depprune" in raw:
            apply_record(model, raw["depprune"])
        if load_weights:
            _load_state(model, p, device)
    else:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32, **attn).to(device)
    return model.eval()


def apply_record(model: nn.Module, section: dict) -> None:
    """Give ``model`` (on meta) the pruned shapes and size attributes stored in a config's ``depprune`` section."""
    if section.get("format") != FORMAT:
        raise ModelSourceError(f"unsupported depprune format {section.get('format')!r}; this version reads {FORMAT}")
    rec = section["record"]
    params = dict(model.named_parameters(remove_duplicate=False))
    aliases: dict[int, list[str]] = {}
    for name, prm in params.items():
        aliases.setdefault(id(prm), []).append(name)
    for name, shape in rec["shapes"].items():
        mod, attr = _get(model, name)
        old = getattr(mod, attr)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
            for alias in aliases.get(id(old), [name]):
                amod, aattr = _get(model, alias)
                setattr(amod, aattr, new)
        else:
            mod._buffers[attr] = new
    from .attributes import apply_shape_adapters, set_attributes

    apply_shape_adapters(model, rec["shapes"].keys() | {a for n in rec["shapes"] for a in _alias_names(params, n)})
    set_attributes(model, rec["attributes"])


def _alias_names(params: dict, name: str) -> list[str]:
    target = params.get(name)
    return [n for n, p in params.items() if p is target] if target is not None else []


def _load_state(model: nn.Module, path: Path, device: str) -> None:
    from safetensors.torch import load_file

    files = sorted(f for f in path.glob("*.safetensors") if f.name != BUFFER_FILE)
    if not files:
        raise ModelSourceError(f"{path} holds no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f), device=device))
    groups: dict[int, list[str]] = {}  # tied weights: one Parameter under several names, stored once
    for name, prm in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(prm), []).append(name)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = set(missing)
    for names in groups.values():
        loaded = [n for n in names if n in state]
        if loaded:
            source_mod, source_attr = _get(model, loaded[0])
            for n in names:
                mod, attr = _get(model, n)
                setattr(mod, attr, getattr(source_mod, source_attr))
                missing.discard(n)
    if missing or unexpected:
        raise ModelSourceError(
            f"{path}: weights do not match the pruned architecture (missing {sorted(missing)[:5]}, unexpected {unexpected[:5]})"
        )
    if (path / BUFFER_FILE).is_file():
        for name, value in load_file(str(path / BUFFER_FILE), device=device).items():
            mod, attr = _get(model, name)
            mod._buffers[attr] = value


def computed_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that ``state_dict`` leaves out (``persistent=False``): recomputed at build time."""
    state = set(model.state_dict())
    return {n: b for n, b in model.named_buffers() if n not in state}


def save_pruned(
    model: nn.Module,
    out: str | os.PathLike,
    record: PruneRecord,
    source: str | os.PathLike | None = None,
    force: bool = False,
    run: dict | None = None,
) -> Path:
    """Write the pruned model to ``out`` atomically (temporary directory, then rename).

    ``run`` (JSON-serialisable: the run config and its outcome) is kept in ``config.json`` under
    ``depprune.run``, so a checkpoint says how it was made.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"output {str(out)!r} exists and is not empty; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # weights under the model's own parameter names (save_pretrained may rename keys to
        # legacy ones, e.g. GPT-NeoX's lm_head -> embed_out); tied weights are stored once
        from safetensors.torch import save_model

        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        computed = computed_buffers(model)
        if computed:  # non-persistent buffers (rotary tables, scales) may have been sliced: keep their values
            from safetensors.torch import save_file

            save_file({n: b.detach().contiguous().cpu() for n, b in computed.items()}, str(tmp / BUFFER_FILE))
        cfg = json.loads((tmp / "config.json").read_text())
        # config.json carries the pruned sizes when the architecture can express them (then any
        # transformers install loads it); the record always lets load_model rebuild per-layer sizes
        cfg["depprune"] = {"format": FORMAT, "hf_loadable": bool(record.config), "record": record.to_dict()}
        if run is not None:
            cfg["depprune"]["run"] = run
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if source is not None:
            for f in TOKENIZER_FILES:
                if (Path(source) / f).is_file():
                    shutil.copy2(Path(source) / f, tmp / f)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

