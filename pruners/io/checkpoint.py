"""Loading models and saving/loading pruned ones.

A pruned model is saved as a Hugging Face directory (safetensors weights, ``config.json``,
tokenizer files copied from the source) whose config keeps the source architecture's fields
and adds a ``depprune`` section: every pruned tensor's shape and every size attribute the
executor changed.  :func:`load_model` rebuilds the architecture on the meta device, applies
that record and loads the weights -- per-layer sizes survive the round trip.  Writing goes
through :class:`~pruners.io.output_dir.OutputDir` (a temporary directory swapped into place), so a
failure never leaves a partial output or touches anything depprune did not write.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelSourceError, PlanError
from ..slicing.executor import PruneRecord, owner_and_attr
from ..slicing.sized_modeling import resize_to_record
from .device import dtype_name, resolve_device, resolve_dtype
from .model_files import (
    check_config,
    check_config_dict,
    check_finite,
    check_stored_parameters,
    check_weights,
    custom_code,
    describe_dangling,
    exception_line,
    has_safetensors,
    mismatch_error,
)
from .output_dir import OutputDir
from .remote_code import MODEL_TYPE_PREFIX, MODELING_FILE, modeling_code, recorded_sizes

FORMAT = 1
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # loadable weights: safetensors only, never pickles
SHARD_SIZE = 5 * 10**9  # bytes per safetensors shard, as on the Hugging Face hub
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_dir(path: str | os.PathLike, weights: bool = True, trust_remote_code: bool = False) -> Path:
    """A directory with a ``config.json``, or a clear error naming what is wrong.

    A Hugging Face hub id (``org/name``) that is not a local path is downloaded to the hub
    cache first (config and tokenizer only when ``weights`` is false; safetensors weights, never
    pickles; Python files only with ``trust_remote_code``).  A symbolic link to a model directory
    is fine; a dangling one is reported as such.
    """
    p = Path(path)
    dangling = describe_dangling(p)
    if dangling:
        raise ModelSourceError(f"model directory {str(path)!r} does not exist ({dangling})")
    if not p.exists() and HUB_ID.match(str(path)):
        return _from_hub(str(path), weights, trust_remote_code)
    if not p.exists():
        raise ModelSourceError(f"model directory {str(path)!r} does not exist")
    if not p.is_dir():
        raise ModelSourceError(f"model path {str(path)!r} is not a directory")
    config = p / "config.json"
    if not config.is_file():
        dangling = describe_dangling(config)
        why = f"its config.json is a {dangling}" if dangling else "it has no config.json"
        raise ModelSourceError(f"{str(path)!r} is not a model directory: {why}")
    return p


def _from_hub(repo_id: str, weights: bool, trust_remote_code: bool = False) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "tokenizer*", "*.model", "*.txt"] + (["*.safetensors"] if weights else [])
    if trust_remote_code:
        patterns.append("*.py")
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
    """Whether ``path`` has safetensors weights to load (``model.safetensors`` or its index; pickles do not count).

    :func:`check_weights` validates them (and refuses a directory holding only pickled weights).
    """
    return has_safetensors(Path(path))


def _read_config(path: Path) -> dict:
    """``config.json`` parsed and checked (a JSON object with a ``model_type`` and sane sizes)."""
    where = path / "config.json"
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelSourceError(f"{where} is not valid JSON: {exception_line(e, 160)}") from None
    except OSError as e:
        raise ModelSourceError(f"{where} cannot be read: {exception_line(e, 160)}") from None
    return check_config_dict(raw, str(where))


def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    weights: bool = True,
    attn_implementation: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    allow_nonfinite: bool = False,
) -> nn.Module:
    """Load a causal LM from a directory (plain HF or depprune output) onto ``device``, in eval mode.

    ``device`` is a ``torch.device`` or a ``--device`` name (``"cpu"``, ``"cuda"``, ``"cuda:1"``;
    ``None``: CUDA when available), ``dtype`` a ``torch.dtype`` or a ``--dtype`` name (``None``:
    the checkpoint's ``config.json`` dtype, float32 when it names none); see :mod:`pruners.io.device`.
    The weights go straight from the safetensors files to ``device`` in ``dtype``, tensor by
    tensor: no full-size copy in another precision or on another device is made on the way.

    With ``weights=False`` or a directory holding only ``config.json``, the model is built on
    the meta device (in ``dtype``): nothing is allocated, so any size can be inspected.
    ``attn_implementation`` (``"eager"``, ``"sdpa"``) is passed to transformers, which does not
    store it in the config.

    Python code shipped with the model (``auto_map``, a model type transformers does not know) is
    imported only with ``trust_remote_code=True``; weights are read from safetensors only (never
    unpickled), their headers validated first, and they must match ``config.json`` exactly
    (missing, unexpected and mis-shaped tensors are errors; tied weights are not).  Loaded weights
    holding NaN/Inf raise :class:`~pruners.errors.NonFiniteError` unless ``allow_nonfinite``.
    Everything else wrong with the directory is a one-line :class:`~pruners.errors.ModelSourceError`.
    """
    trust = bool(trust_remote_code)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    p = check_model_dir(path, weights, trust)
    raw = _read_config(p)
    where = p / "config.json"
    generated = generated_code(raw)
    reason = None if generated else custom_code(raw, str(where))  # depprune's own modeling code is never run
    if reason and not trust:
        raise ModelSourceError(reason)
    dtype = resolve_dtype(dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype, checkpoint_dtype(raw))
    tensors = check_weights(p) if weights else {}  # refuses pickle-only and corrupt weights
    load_weights = weights and has_weights(p)  # a valid file without tensors still fails below
    config = source_config(raw, where) if generated else read_hf_config(p, trust)
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if "depprune" in raw or not load_weights:
        # parameters on meta (the weights come later); non-persistent buffers (rotary inv_freq)
        # computed for real on the device when weights follow
        model = build_for_weights(config, where, device if load_weights else torch.device("meta"), dtype, trust, attn)
        if "depprune" in raw:
            try:
                apply_record(model, raw["depprune"])
            except ModelSourceError:
                raise
            except Exception as e:  # a hand-edited or truncated record
                raise ModelSourceError(f"{where}: its depprune record cannot be applied: {exception_line(e)}") from e
        if load_weights:
            _load_state(model, p, device, tensors)
    else:
        model = _from_pretrained(p, device, dtype, trust, attn)
    if load_weights:
        check_stored_parameters(model, tensors, p)
        if not allow_nonfinite:
            check_finite(model, p)
    return model.eval()


def load_pruned(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    *,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    allow_nonfinite: bool = False,
) -> tuple[nn.Module, PruneRecord]:
    """A model depprune saved, and the record of what was pruned (:class:`~pruners.slicing.executor.PruneRecord`).

    The model is loaded as :func:`load_model` does (onto ``device``, in ``dtype``: by default the
    dtype it was saved in); a directory without a ``depprune`` section
    in its ``config.json`` (not written by depprune) is a :class:`~pruners.errors.ModelSourceError`.
    """
    p = check_model_dir(path, True, bool(trust_remote_code))
    section = _read_config(p).get("depprune")
    if not isinstance(section, dict) or not isinstance(section.get("record"), dict):
        raise ModelSourceError(
            f"{p / 'config.json'} has no depprune record: {str(path)!r} was not written by depprune; load it with load_model"
        )
    model = load_model(p, device, dtype=dtype, trust_remote_code=trust_remote_code, allow_nonfinite=allow_nonfinite)
    try:
        record = PruneRecord.from_dict(section["record"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelSourceError(f"{p / 'config.json'}: its depprune record is malformed: {exception_line(e)}") from e
    return model, record


def read_run(path: str | os.PathLike) -> dict | None:
    """The run record (``depprune.run`` in ``config.json``: how the model was made) of a directory depprune wrote.

    None when the directory holds no run record (a model saved by :func:`save_pruned` without
    ``run``, or not written by depprune); a ``config.json`` that cannot be read is a
    :class:`~pruners.errors.ModelSourceError`.
    """
    section = _read_config(check_model_dir(path, weights=False)).get("depprune")
    run = section.get("run") if isinstance(section, dict) else None
    return run if isinstance(run, dict) else None


def read_hf_config(p: Path, trust: bool):
    """transformers' config object for ``p``, any failure as one line."""
    from transformers import AutoConfig

    where = p / "config.json"
    try:
        config = AutoConfig.from_pretrained(p, trust_remote_code=trust)
    except Exception as e:
        raise ModelSourceError(f"transformers cannot read {where}: {exception_line(e)}") from e
    check_config(config, f"{where} (as transformers reads it)")
    return config


def generated_code(raw: dict) -> bool:
    """Whether a parsed ``config.json`` belongs to a directory with depprune's generated modeling code.

    >>> generated_code({"model_type": "depprune_llama", "depprune": {"source_model_type": "llama"}})
    True
    """
    section = raw.get("depprune")
    source = section.get("source_model_type") if isinstance(section, dict) else None
    return isinstance(source, str) and raw.get("model_type") == MODEL_TYPE_PREFIX + source


def source_config(raw: dict, where: Path):
    """The source architecture's config for a directory with generated modeling code (which is not run).

    Its own fields with the source ``model_type``, without the code's ``auto_map`` and without
    ``per_layer_config``: the record gives the pruned sizes (see :func:`apply_record`).
    """
    from transformers import CONFIG_MAPPING

    source = raw["depprune"]["source_model_type"]
    fields = {k: v for k, v in raw.items() if k not in ("auto_map", "per_layer_config", "architectures")}
    fields["model_type"] = source
    try:
        config = CONFIG_MAPPING[source].from_dict(fields)
    except Exception as e:
        raise ModelSourceError(f"transformers cannot read {where} as a {source} config: {exception_line(e)}") from e
    check_config(config, f"{where} (as transformers reads it)")
    return config


def checkpoint_dtype(raw: dict) -> str | None:
    """The dtype a parsed ``config.json`` names (``dtype``, or the older ``torch_dtype``), or None.

    >>> checkpoint_dtype({"torch_dtype": "bfloat16"}), checkpoint_dtype({})
    ('bfloat16', None)
    """
    return raw.get("dtype", raw.get("torch_dtype"))


def build_for_weights(config, where: Path, device: torch.device, dtype: torch.dtype, trust: bool, attn: dict) -> nn.Module:
    """The architecture of ``config`` in ``dtype``, its parameters on meta (nothing allocated, no
    random init), its buffers computed on ``device``."""
    from accelerate import init_empty_weights  # a dependency of peft
    from transformers import AutoModelForCausalLM

    params_on_meta = nullcontext() if device.type == "meta" else init_empty_weights(include_buffers=False)
    try:
        with torch.device(device), params_on_meta:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust, **attn)
        model.tie_weights()  # init_empty_weights wraps each parameter anew, which unties shared ones
        return model
    except Exception as e:
        raise ModelSourceError(
            f"transformers cannot build a model from {where}: {exception_line(e)}{_config_field_hint(config, e)}"
        ) from e


def _config_field_hint(config, e: Exception) -> str:
    """For a KeyError on a config value (an unknown ``hidden_act`` or ``rope_type``): which field holds it.

    >>> from transformers import LlamaConfig
    >>> _config_field_hint(LlamaConfig(hidden_act="nope"), KeyError("nope"))
    " (the value of 'hidden_act' in config.json is not one transformers knows)"
    """
    if not isinstance(e, KeyError) or not e.args:
        return ""

    def find(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                hit = find(v, path + [str(k)])
                if hit:
                    return hit
        elif isinstance(node, str) and node == e.args[0]:
            return ".".join(path)
        return None

    field = find(config.to_dict(), [])
    return f" (the value of {field!r} in config.json is not one transformers knows)" if field else ""


class _NoLoadReport(logging.Filter):
    """Drop transformers' printed LOAD REPORT table: :func:`_from_pretrained` raises on its content instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def _from_pretrained(p: Path, device: torch.device, dtype: torch.dtype, trust: bool, attn: dict) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` from safetensors only, straight onto ``device`` in ``dtype``,
    its loading report turned into errors."""
    from transformers import AutoModelForCausalLM

    logger = logging.getLogger("transformers.modeling_utils")
    quiet = _NoLoadReport()
    logger.addFilter(quiet)
    placement = {} if device.type == "cpu" else {"device_map": {"": device}}  # each tensor loaded onto the device
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            p, dtype=dtype, use_safetensors=True, trust_remote_code=trust, output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below instead of raised after a printed table
            **placement, **attn,
        )
    except ModelSourceError:
        raise
    except Exception as e:
        raise ModelSourceError(f"transformers cannot load a model from {p}: {exception_line(e)}") from e
    finally:
        logger.removeFilter(quiet)
    err = mismatch_error(p, info.get("missing_keys"), info.get("unexpected_keys"), info.get("mismatched_keys"))
    if err:
        raise err
    if info.get("error_msgs"):
        raise ModelSourceError(f"transformers cannot load the weights in {p}: {exception_line(Exception(info['error_msgs'][0]))}")
    return model


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False, vocab_size: int | None = None):
    """``AutoTokenizer.from_pretrained(path)``, importing no code shipped with it unless ``trust_remote_code``.

    A ``tokenizer_config.json`` (or ``config.json``) with a tokenizer ``auto_map`` is refused
    without it; any failure to load is one :class:`~pruners.errors.ModelSourceError` line.  With
    ``vocab_size`` (the model's embedding rows), a tokenizer that can produce larger ids is
    refused: it belongs to another model.
    """
    tokenizer = _load_tokenizer(path, trust_remote_code)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ModelSourceError(
            f"the tokenizer of {str(path)!r} has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}: "
            "it belongs to another model; give the model's own tokenizer (--tokenizer DIR)"
        )
    return tokenizer


def _load_tokenizer(path: str | os.PathLike, trust_remote_code: bool):
    from transformers import AutoTokenizer

    trust = bool(trust_remote_code)
    p = Path(path)
    dangling = describe_dangling(p)
    if dangling:
        raise ModelSourceError(f"tokenizer directory {str(path)!r} does not exist ({dangling})")
    if not p.exists() and HUB_ID.match(str(path)):
        p = _from_hub(str(path), weights=False, trust_remote_code=trust)
    if not p.exists():
        raise ModelSourceError(f"tokenizer directory {str(path)!r} does not exist")
    if not p.is_dir():
        raise ModelSourceError(f"tokenizer path {str(path)!r} is not a directory")
    for name in ("tokenizer_config.json", "config.json"):
        f = p / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, OSError) as e:
            raise ModelSourceError(f"{f} is not valid JSON: {exception_line(e, 160)}") from None
        if not isinstance(data, dict):
            raise ModelSourceError(f"{f} is not a JSON object (it holds a JSON {type(data).__name__})")
        auto_map = data.get("auto_map")
        if name == "config.json":  # a model's auto_map matters here only for its tokenizer entry
            auto_map = {"AutoTokenizer": auto_map["AutoTokenizer"]} if isinstance(auto_map, dict) and auto_map.get(
                "AutoTokenizer") else None
        reason = custom_code({"auto_map": auto_map}, str(f), what="tokenizer")
        if reason and not trust:
            raise ModelSourceError(reason)
    try:
        return AutoTokenizer.from_pretrained(p, trust_remote_code=trust)
    except Exception as e:
        raise ModelSourceError(f"cannot load a tokenizer from {p}: {exception_line(e)}") from e


def apply_record(model: nn.Module, section: dict) -> None:
    """Give ``model`` (on meta) the pruned shapes and size attributes stored in a config's ``depprune`` section."""
    if section.get("format") != FORMAT:
        raise ModelSourceError(f"unsupported depprune format {section.get('format')!r}; this version reads {FORMAT}")
    rec = section["record"]
    params = dict(model.named_parameters(remove_duplicate=False))
    resize_to_record(model, {"shapes": rec["shapes"], "attributes": []})  # tied weights stay tied
    from ..slicing.attributes import apply_shape_adapters, set_attributes

    apply_shape_adapters(model, rec["shapes"].keys() | {a for n in rec["shapes"] for a in _alias_names(params, n)})
    set_attributes(model, rec["attributes"])


def _alias_names(params: dict, name: str) -> list[str]:
    target = params.get(name)
    return [n for n, p in params.items() if p is target] if target is not None else []


def _load_state(model: nn.Module, path: Path, device: torch.device, tensors: dict | None = None) -> None:
    """Load the safetensors weights of ``path`` (``tensors``: their validated headers, from
    :func:`check_weights`) into ``model``, which must expect exactly these names and shapes.

    Each tensor is read onto ``device`` and, when it is floating point, cast to the dtype of the
    model's tensor of that name (the dtype the model was built in), one tensor at a time.
    Tied weights (one Parameter under several names) are stored once under any of their names;
    non-persistent buffers are not expected: the model computed them when it was built.
    """
    tensors = check_weights(path) if tensors is None else tensors
    if not tensors:
        what = "its safetensors files hold no tensors" if has_weights(path) else "it holds no safetensors weights"
        raise ModelSourceError(f"{path}: {what} (expected model.safetensors or model.safetensors.index.json)")
    built = model.state_dict(keep_vars=True)
    expected = {k: tuple(v.shape) for k, v in built.items()}
    groups: dict[int, list[str]] = {}  # tied weights: one Parameter under several names, stored once
    for name, prm in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(prm), []).append(name)
    tied = {n: names for names in groups.values() for n in names}
    missing = [k for k in expected if k not in tensors and not any(a in tensors for a in tied.get(k, ()))]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [(k, tensors[k].shape, expected[k]) for k in tensors if k in expected and tensors[k].shape != expected[k]]
    err = mismatch_error(path, missing, unexpected, mismatched)
    if err:
        raise err
    state: dict[str, torch.Tensor] = {}
    for f in sorted({t.file for t in tensors.values()}):
        state.update(_read_tensors(f, device, {k: v.dtype for k, v in built.items()}))
    model.load_state_dict(state, strict=False, assign=True)
    for names in groups.values():
        loaded = [n for n in names if n in state]
        if loaded:
            source_mod, source_attr = owner_and_attr(model, loaded[0])
            for n in names:
                mod, attr = owner_and_attr(model, n)
                setattr(mod, attr, getattr(source_mod, source_attr))


def _read_tensors(file: Path, device: torch.device, dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors ``file``, read onto ``device``; a floating-point one cast to
    ``dtypes[name]`` (integer and boolean ones are kept, for :func:`check_stored_parameters` to refuse)."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for name in f.keys():  # noqa: SIM118  (a safe_open handle is not a dict)
                t = f.get_tensor(name)
                want = dtypes.get(name)
                out[name] = t.to(want) if want is not None and t.is_floating_point() and want.is_floating_point else t
    except Exception as e:  # the header was valid; the data could not be read
        raise ModelSourceError(f"not a valid safetensors file: {file} ({exception_line(e, 160)})") from e
    return out


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
    max_shard_size: int = SHARD_SIZE,
) -> Path:
    """Write the pruned model to ``out`` safely, through :class:`pruners.io.output_dir.OutputDir`.

    ``out`` is checked and locked first; the files are written to a temporary directory beside it
    and swapped in atomically.  ``force`` replaces only a directory depprune wrote; ``out`` may not
    overlap ``source``.  ``run`` (JSON-serialisable: the run config and its outcome) is kept in
    ``config.json`` under ``depprune.run``, so a checkpoint says how it was made.  Weights over
``max_shard_size`` bytes are sharded (see :func:`save_weights`).  Raises
    :class:`pruners.errors.OutputError` when ``out`` cannot be written without risking other data.
    """
    with OutputDir(out, force=force, inputs=[source]) as od:
        return od.write(lambda tmp: write_pruned(model, tmp, record, source, run, max_shard_size))


def write_pruned(
    model: nn.Module,
    directory: str | os.PathLike,
    record: PruneRecord,
    source: str | os.PathLike | None = None,
    run: dict | None = None,
    max_shard_size: int = SHARD_SIZE,
) -> None:
    """Fill the existing (empty) ``directory`` with the pruned model: weights, config, tokenizer files.

    The weights go to ``model.safetensors``, or to shards of at most ``max_shard_size`` bytes
    and their ``model.safetensors.index.json``.  Nothing else holds tensors: computed buffers
    (rotary tables, embedding scales) are rebuilt from the config on load, which
    :func:`check_rebuilt_buffers` makes sure of before anything is written.
    Deterministic: the same model gives byte-identical files in any process.
    """
    directory = Path(directory)
    check_rebuilt_buffers(model, record)
    save_weights(model, directory, max_shard_size)
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    cfg = json.loads((directory / "config.json").read_text())
    cfg.pop("torch_dtype", None)
    cfg["dtype"] = dtype_name(weights_dtype(model))  # what the tensors are, even after a model.to(dtype)
    if not cfg.get("architectures"):  # a model built from a config has none; engines pick their class by it
        cfg["architectures"] = [type(model).__name__]
    # config.json carries the pruned sizes when the architecture can express them (then any
    # transformers install loads it); the record always lets load_model rebuild per-layer sizes
    cfg["depprune"] = {"format": FORMAT, "hf_loadable": bool(record.config), "record": record.to_dict()}
    code = None if record.config else modeling_code(model)
    if code is not None:  # per-layer sizes: generated modeling code that applies them (trust_remote_code)
        text, fields = code
        (directory / MODELING_FILE).write_text(text, encoding="utf-8")
        cfg.update(fields)
        cfg["depprune"].update(source_model_type=model.config.model_type, sizes=recorded_sizes(model, record))
        if record.per_layer:
            cfg.update(record.per_layer["global"])
            cfg["per_layer_config"] = record.per_layer["layers"]
    cfg["depprune"]["remote_code"] = MODELING_FILE if code is not None else None
    if run is not None:
        cfg["depprune"]["run"] = run
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if source is not None:
        for f in TOKENIZER_FILES:
            if (Path(source) / f).is_file():
                shutil.copyfile(Path(source) / f, directory / f)


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of most of ``model``'s floating-point parameters (by element count; float32 if it has none).

    >>> weights_dtype(nn.Linear(2, 2).to(torch.bfloat16))
    torch.bfloat16
    """
    count: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            count[p.dtype] = count.get(p.dtype, 0) + p.numel()
    return max(count, key=count.__getitem__) if count else torch.float32


def state_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with tied weights kept once, under the alphabetically first of their names.

    ``safetensors.torch.save_model`` records the dropped alias names in the header metadata, which
    safetensors writes in a per-process hash order; here the aliases are simply left out (the
    loaders re-tie them: :func:`_load_state` accepts any one of the names).  A tensor sharing
    memory with another without being the same view is stored as a copy.

    >>> lin = nn.Linear(2, 2, bias=False)
    >>> m = nn.ModuleDict({"b": lin, "a": lin})
    >>> sorted(state_to_save(m))
    ['a.weight']
    """
    state = model.state_dict()
    kept: dict[tuple, str] = {}
    storages: set[tuple] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(state):
        t = state[name].detach()
        storage = (t.device, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and view in kept:
            continue  # an alias (tied weight) of kept[view]
        if t.numel() and storage in storages:
            t = t.clone()
        kept[view] = name
        storages.add(storage)
        tensors[name] = t.contiguous()
    return tensors


def save_weights(model: nn.Module, directory: Path, max_shard_size: int = SHARD_SIZE) -> list[str]:
    """Write the weights as ``model.safetensors``, or as shards with an index when they exceed ``max_shard_size`` bytes.

    Tensors keep the model's own parameter names (``save_pretrained`` may rename keys to legacy
    ones, e.g. GPT-NeoX's lm_head -> embed_out), tied weights once, no metadata but the format.
    Shards take tensors in name order, a new one when the next tensor would overflow (a tensor
    larger than ``max_shard_size`` gets a shard of its own); the index is Hugging Face's
    ``{"metadata": {"total_size": ...}, "weight_map": {tensor: shard}}``.  Returns the file names written.
    """
    from safetensors.torch import save_file

    if max_shard_size < 1:
        raise ValueError(f"max_shard_size must be a positive number of bytes, got {max_shard_size}")
    state = state_to_save(model)
    nbytes = {n: t.numel() * t.element_size() for n, t in state.items()}
    total = sum(nbytes.values())
    if total <= max_shard_size:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    shards: list[list[str]] = [[]]
    size = 0
    for name in state:  # state_to_save sorts by name
        if shards[-1] and size + nbytes[name] > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes[name]
    files = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    weight_map = {}
    for file, names in zip(files, shards):
        save_file({n: state[n] for n in names}, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*files, "model.safetensors.index.json"]


def check_rebuilt_buffers(model: nn.Module, record: PruneRecord) -> None:
    """Refuse (:class:`~pruners.errors.PlanError`) a pruned model whose computed buffers loading would not rebuild.

    Non-persistent buffers (rotary ``inv_freq``, Gemma's ``embed_scale``) are not saved: the
    architecture computes them from ``config.json`` when it is built.  Here the model is built
    as :func:`load_model` builds it -- parameters on meta, buffers for real, the record applied
    -- and each computed buffer compared with the pruned model's.  A plan that slices one
    (a buffer along a pruned axis) would load as a different model, so it is refused: by
    :func:`pruners.prune` right after slicing, and again before anything is written.
    """
    computed = computed_buffers(model)
    if not computed or not hasattr(getattr(model, "config", None), "to_dict"):  # saved only for HF models
        return
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        rebuilt = type(model)(copy.deepcopy(model.config))
    apply_record(rebuilt, {"format": FORMAT, "record": record.to_dict()})
    again = dict(rebuilt.named_buffers())
    for name, b in sorted(computed.items()):
        r = again.get(name)
        if r is None or r.shape != b.shape or not torch.equal(r.to(device=b.device, dtype=b.dtype), b):
            raise PlanError(
                f"the pruned model's computed buffer {name!r} {list(b.shape)} is not what its config rebuilds"
                f" ({'none' if r is None else list(r.shape)}): such buffers are not saved, so the output would"
                " load as another model; leave the structures it follows out of the plan (--kinds)"
            )
