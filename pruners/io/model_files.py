"""Checks on a model directory's files before transformers or safetensors see them.

Everything here is cheap (headers and JSON only, never tensor data) and raises
:class:`~pruners.errors.ModelSourceError` with one line naming the file, tensor or field and
saying what would be valid:

- :func:`check_weights` finds the safetensors weights (``model.safetensors`` or the shards of
  ``model.safetensors.index.json``) and validates every header; a directory holding only pickled
  weights (``pytorch_model.bin``) is refused, never unpickled.
- :func:`parse_safetensors_header` validates one safetensors header the way the safetensors
  library does (length, JSON, dtypes, shapes, contiguous offsets covering the data section).
- :func:`check_config_dict` / :func:`check_config` check ``config.json`` and the config object
  transformers builds from it (positive integer sizes, ``num_key_value_heads`` dividing
  ``num_attention_heads``); :func:`custom_code` says why a config would run foreign code.
- :func:`check_finite` refuses NaN/Inf parameters with :class:`~pruners.errors.NonFiniteError`.

>>> import io, struct
>>> parse_safetensors_header(io.BytesIO(b"\\x02" + b"\\x00" * 7 + b"{}"), 10, "m.safetensors")
{}
>>> parse_safetensors_header(io.BytesIO(b"\\x00" * 3), 3, "m.safetensors")
Traceback (most recent call last):
...
pruners.errors.ModelSourceError: not a valid safetensors file: m.safetensors (the file is 3 bytes, shorter than the 8-byte header length)
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ..errors import ModelSourceError, NonFiniteError, first_line

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# pickled checkpoints (torch.load), recognised only to refuse them with a useful message
PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json", "model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
MAX_HEADER = 100_000_000  # the safetensors library's own limit
# bits per element of the dtypes safetensors.torch can read
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}
MAX_LAYERS = 10_000
SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "vocab_size", "max_position_embeddings")
CONVERT_HINT = (
    "convert it, if you trust its source, with AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR) "
    "(transformers writes safetensors)"
)


class TensorEntry(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    file: Path


def exception_line(e: BaseException, limit: int = 300) -> str:
    """``TypeName: first line of the message`` (a line ending in ``:`` takes the next one too), shortened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = first_line(e)
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dangling_link(p: Path) -> tuple[Path, str] | None:
    """The first of ``p`` and its parents that is a symbolic link to nothing, with its target."""
    for q in (p, *p.parents):
        if q.is_symlink() and not q.exists():
            return q, os.readlink(q)
    return None


def describe_dangling(p: Path) -> str | None:
    """``"dangling symbolic link to T"`` (``", at Q"`` when a parent is the link), or None."""
    found = dangling_link(p)
    if found is None:
        return None
    q, target = found
    return f"dangling symbolic link to {target}" + ("" if q == p else f", at {q}")


# -- safetensors ------------------------------------------------------------------------------------


def _invalid(where: str, reason: str) -> ModelSourceError:
    return ModelSourceError(f"not a valid safetensors file: {where} ({reason})")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _is_count(x) -> bool:
    return type(x) is int and 0 <= x < 2**64


def parse_safetensors_header(f: BinaryIO, size: int, where: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor: (dtype, shape)}`` from the header of the ``size``-byte safetensors file ``f``.

    Checks what the safetensors library checks before it maps data: an 8-byte little-endian header
    length within the file, a UTF-8 JSON object, a known dtype, a shape of non-negative integers and
    ``data_offsets`` ``[begin, end]`` for every tensor, with ``end - begin`` the tensor's byte size and
    the tensors packed back to back so that they cover the data section exactly.
    """
    if size < 8:
        raise _invalid(where, f"the file is {size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise _invalid(where, f"its header length {n} runs past the end of the {size}-byte file")
    if n > MAX_HEADER:
        raise _invalid(where, f"its header length {n} is over the {MAX_HEADER}-byte limit")
    raw = f.read(n)
    if len(raw) != n:
        raise _invalid(where, f"the file ends inside its {n}-byte header")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _invalid(where, f"its header is not UTF-8 JSON: {exception_line(e, 120)}") from None
    if not isinstance(header, dict):
        raise _invalid(where, f"its header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans: list[tuple[int, int, int, str]] = []
    for name, entry in header.items():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(where, f"tensor name {name!r} is not valid UTF-8") from None
        if name == "__metadata__":
            if entry is not None and not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise _invalid(where, "__metadata__ is not an object of strings")
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise _invalid(where, f"tensor {name!r} has no dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BITS:
            raise _invalid(where, f"tensor {name!r} has dtype {dtype!r}; expected one of {', '.join(DTYPE_BITS)}")
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            raise _invalid(where, f"tensor {name!r} has shape {shape!r}; expected a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise _invalid(where, f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
        begin, end = offsets
        numel = 1
        for s in shape:
            numel *= s
        bits = numel * DTYPE_BITS[dtype]
        if end < begin or end > data_size:
            raise _invalid(where, f"tensor {name!r} has data_offsets {offsets} outside the {data_size}-byte data section")
        if bits != 8 * (end - begin):
            raise _invalid(
                where, f"tensor {name!r} of dtype {dtype} and shape {shape} needs {bits // 8} bytes, "
                f"but its data_offsets {offsets} span {end - begin}"
            )
        spans.append((begin, end, len(spans), name))
        out[name] = (dtype, tuple(shape))
    cursor = 0
    for begin, end, _, name in sorted(spans):
        if begin != cursor:
            raise _invalid(where, f"tensor {name!r} starts at byte {begin}, expected {cursor} (tensors overlap or leave a gap)")
        cursor = end
    if cursor != data_size:
        raise _invalid(where, f"the tensors cover {cursor} bytes but the data section holds {data_size}")
    return out


def _existing_file(path: Path, where: str | None = None) -> Path:
    where = str(path) if where is None else where
    dangling = describe_dangling(path)
    if dangling:
        raise _invalid(where, dangling)
    if not path.exists():
        raise _invalid(where, "it does not exist")
    if not path.is_file():
        raise _invalid(where, "it is not a regular file")
    return path


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """:func:`parse_safetensors_header` of the file at ``path`` (a dangling link or a directory is refused too)."""
    _existing_file(path)
    try:
        with open(path, "rb") as f:
            return parse_safetensors_header(f, os.fstat(f.fileno()).st_size, str(path))
    except OSError as e:
        raise _invalid(str(path), f"cannot read it: {exception_line(e, 120)}") from None


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def has_safetensors(model_dir: Path) -> bool:
    """Whether ``model_dir`` has safetensors weights (``model.safetensors`` or its index), even broken ones."""
    return _present(model_dir / SAFETENSORS) or _present(model_dir / SAFETENSORS_INDEX)


def pickled_files(model_dir: Path) -> list[str]:
    """Names of pickled checkpoint files in ``model_dir`` (never opened)."""
    names = {p.name for pattern in PICKLE_PATTERNS for p in model_dir.glob(pattern)}
    return sorted(names, key=natural_key)


def _read_index(index: Path) -> dict[str, str]:
    where = str(index)
    _existing_file(index)
    try:
        data = json.loads(index.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _invalid(where, f"not valid JSON: {exception_line(e, 120)}") from None
    except OSError as e:
        raise _invalid(where, f"cannot read it: {exception_line(e, 120)}") from None
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
        raise _invalid(where, "expected a JSON object with a non-empty weight_map of tensor name -> shard file name")
    for tensor, shard in wmap.items():
        parts = Path(shard).parts
        if not shard or Path(shard).is_absolute() or ".." in parts or not shard.endswith(".safetensors"):
            raise _invalid(where, f"tensor {tensor!r} is mapped to {shard!r}; expected a .safetensors file in {index.parent}")
    return wmap


def check_weights(model_dir: str | os.PathLike) -> dict[str, TensorEntry]:
    """Every weight tensor of ``model_dir`` (``{name: (dtype, shape, file)}``) after validating the headers.

    Reads ``model.safetensors``, else the shards named by ``model.safetensors.index.json``; returns
    ``{}`` when the directory holds no weights at all.  A directory with only pickled weights
    (``pytorch_model.bin``, ``.bin`` shards, ``.pt``) is refused: pickles are never loaded.
    """
    d = Path(model_dir)
    single, index = d / SAFETENSORS, d / SAFETENSORS_INDEX
    if _present(single):
        return {k: TensorEntry(dt, shape, single) for k, (dt, shape) in read_safetensors_header(single).items()}
    if _present(index):
        wmap = _read_index(index)
        out: dict[str, TensorEntry] = {}
        headers: dict[str, dict] = {}
        for tensor, shard in wmap.items():
            if shard not in headers:
                path = d / shard
                dangling = describe_dangling(path)
                if dangling or not path.is_file():
                    what = dangling or ("it does not exist" if not path.exists() else "it is not a file")
                    raise _invalid(str(index), f"shard {shard!r}, named for tensor {tensor!r}: {what}")
                headers[shard] = read_safetensors_header(path)
                out.update({k: TensorEntry(dt, shape, path) for k, (dt, shape) in headers[shard].items()})
            if tensor not in headers[shard]:
                raise _invalid(str(index), f"tensor {tensor!r} is mapped to shard {shard!r}, which does not hold it")
        return out
    pickles = pickled_files(d)
    if pickles:
        shown = ", ".join(pickles[:3]) + (f" and {len(pickles) - 3} more" if len(pickles) > 3 else "")
        raise ModelSourceError(
            f"{d} holds only pickled weights {shown}; depprune reads safetensors only (unpickling can run code) "
            f"-- {CONVERT_HINT}"
        )
    return {}


# -- config.json ------------------------------------------------------------------------------------


def _size_ok(v) -> bool:
    if isinstance(v, list):  # per-layer sizes (e.g. Gemma 3n's intermediate_size)
        return bool(v) and all(type(x) is int and x > 0 for x in v)
    return type(v) is int and v > 0


def _check_sizes(get, where: str) -> None:
    for name in SIZE_FIELDS:
        v = get(name)
        if v is not None and not _size_ok(v):
            raise ModelSourceError(f"{where}: {name} is {v!r}; expected a positive integer")
    layers = get("num_hidden_layers")
    if type(layers) is int and layers > MAX_LAYERS:  # building it, even on meta, would take hours
        raise ModelSourceError(
            f"{where}: num_hidden_layers is {layers}; expected at most {MAX_LAYERS} (the largest models have a few hundred)"
        )
    heads, kv = get("num_attention_heads"), get("num_key_value_heads")
    if type(heads) is int and type(kv) is int and heads % kv:
        raise ModelSourceError(
            f"{where}: num_key_value_heads {kv!r} does not divide num_attention_heads {heads!r}; "
            f"expected a divisor of {heads} (each key/value head serves the same number of query heads)"
        )


def check_config_dict(raw: object, where: str) -> dict:
    """``raw`` (a parsed ``config.json``) if it is a JSON object with a ``model_type`` and sane sizes.

    >>> check_config_dict({"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 3}, "c.json")
    Traceback (most recent call last):
    ...
    pruners.errors.ModelSourceError: c.json: num_key_value_heads 3 does not divide num_attention_heads 8; expected a divisor of 8 (each key/value head serves the same number of query heads)
    """
    if not isinstance(raw, dict):
        raise ModelSourceError(f"{where} is not a JSON object (it holds a JSON {type(raw).__name__})")
    if "model_type" not in raw:
        raise ModelSourceError(f"{where} has no model_type; expected the transformers model type, e.g. \"llama\"")
    mt = raw["model_type"]
    if not isinstance(mt, str) or not mt.strip():
        raise ModelSourceError(f"{where}: model_type is {mt!r}; expected the name of a model type, e.g. \"llama\"")
    _check_sizes(lambda k: raw.get(k), where)
    text = raw.get("text_config")
    if isinstance(text, dict):
        _check_sizes(lambda k: text.get(k), f"{where} (text_config)")
    return raw


def check_config(config, where: str) -> None:
    """The same size checks on the config object transformers built (defaults and attribute maps applied)."""

    def getter(cfg):
        def get(name):
            try:
                return getattr(cfg, name, None)
            except Exception:  # a property that cannot compute itself from a broken config
                return None

        return get

    _check_sizes(getter(config), where)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        _check_sizes(getter(text), f"{where} (text_config)")


def _auto_map_text(auto_map) -> str:
    if isinstance(auto_map, dict):
        items = [f"{k}: {v}" for k, v in auto_map.items()]
    elif isinstance(auto_map, list):
        items = [str(v) for v in auto_map]
    else:
        items = [repr(auto_map)]
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


def custom_code(raw: dict, where: str, what: str = "modelling") -> str | None:
    """Why loading ``raw`` (a parsed ``config.json``) would import Python code shipped with the model, or None."""
    auto_map = raw.get("auto_map")
    if auto_map:
        return (f"{where} contains custom {what} code (auto_map {_auto_map_text(auto_map)}); "
                "depprune runs it only with --trust-remote-code")
    mt = raw.get("model_type")
    if what == "modelling" and isinstance(mt, str):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if mt not in CONFIG_MAPPING:
            return (f"{where}: model_type {mt!r} is not a built-in transformers model type, so it needs custom "
                    "modelling code; depprune runs it only with --trust-remote-code")
    return None


# -- loading reports and weights ----------------------------------------------------------------------


def natural_key(name: str) -> list:
    """Sort key putting ``layers.2`` before ``layers.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _names(keys, limit: int = 5) -> str:
    keys = sorted(keys, key=natural_key)
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def _count(n: int) -> str:
    return f"{n} tensor" + ("" if n == 1 else "s")


def mismatch_error(model_dir, missing, unexpected, mismatched) -> ModelSourceError | None:
    """One line naming (up to 5 of) the missing, unexpected and mis-shaped tensors, or None if there are none.

    ``mismatched`` holds ``(name, shape in the file, shape in the model)``.
    """
    parts = []
    if missing:
        parts.append(f"missing {_count(len(missing))} ({_names(missing)})")
    if unexpected:
        parts.append(f"unexpected {_count(len(unexpected))} ({_names(unexpected)})")
    if mismatched:
        rows = sorted(mismatched, key=lambda r: natural_key(r[0]))
        k, a, b = rows[0]
        shown = f"{k} is {_shape(a)} in the file but {_shape(b)} in the model"
        if len(rows) > 1:
            shown += "; also " + _names([r[0] for r in rows[1:]], 4)
        parts.append(f"mismatched shapes for {_count(len(rows))} ({shown})")
    if not parts:
        return None
    return ModelSourceError(f"the weights in {model_dir} do not match its config.json: " + "; ".join(parts))


def check_finite(model, where) -> None:
    """Raise :class:`NonFiniteError` naming every parameter holding NaN or Inf (one pass, one check per tensor)."""
    import torch

    bad = []
    for name, p in model.named_parameters():
        if p.is_floating_point() or p.is_complex():
            if p.device.type != "meta" and not bool(torch.isfinite(p).all()):
                bad.append((name, int((~torch.isfinite(p)).sum()), p.numel()))
    if bad:
        shown = ", ".join(f"{n} ({k} of {total} values)" for n, k, total in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise NonFiniteError(
            f"{where}: {_count(len(bad))} {'holds' if len(bad) == 1 else 'hold'} NaN or Inf: {shown}; "
            "pass --allow-nonfinite to load them anyway"
        )


FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})


def check_stored_parameters(model, tensors: dict[str, TensorEntry], where) -> None:
    """Stored parameters must be floating point, and tied names stored twice must agree.

    transformers casts integer or boolean tensors (a quantized or corrupted file) to the model's
    float dtype without a word, and when ``tie_word_embeddings`` ties ``lm_head.weight`` to the
    embedding it keeps one of two stored copies; either way the model would silently differ from
    the file.
    """
    import torch
    from safetensors import safe_open

    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if getattr(model.config, "tie_word_embeddings", False) and out is not None and out.weight is not inp.weight:
        # transformers unties them when the file stores two different matrices; a saved config would then lie
        raise ModelSourceError(
            f"{where}: config.json sets tie_word_embeddings but the weights store different input and output "
            "embeddings; set tie_word_embeddings to false (or store one matrix)"
        )
    tied: dict[int, list[str]] = {}
    for name, prm in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(prm), []).append(name)
        entry = tensors.get(name)
        if entry is not None and entry.dtype not in FLOAT_DTYPES:
            raise ModelSourceError(
                f"{entry.file}: parameter {name} is stored as {entry.dtype}, not a floating-point type; "
                "quantized or integer weights are not supported, store them as F32, F16 or BF16"
            )
    for names in tied.values():
        stored = [n for n in names if n in tensors]
        if len(stored) < 2:
            continue
        values = []
        for n in stored:
            with safe_open(str(tensors[n].file), framework="pt") as f:
                values.append(f.get_tensor(n))
        if any(v.shape != values[0].shape or not torch.equal(v, values[0]) for v in values[1:]):
            raise ModelSourceError(
                f"{where}: config.json ties {', '.join(stored)} (tie_word_embeddings) but the weights store them with "
                "different values; set tie_word_embeddings to false or store one of them"
            )
