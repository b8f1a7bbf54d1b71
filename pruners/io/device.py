"""Where a model runs and in which precision: ``--device`` and ``--dtype``, resolved once, checked first.

``--device`` is ``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N``; without it, CUDA when
available, else the CPU.  ``--dtype`` is ``float32``, ``bfloat16`` or ``float16``; without it,
the checkpoint's own dtype (``dtype``, or the older ``torch_dtype``, in ``config.json``), float32
when the config names none.  Both run on the CPU too: torch 2.13 has CPU kernels for bf16 and
fp16 matmuls, attention, backward and generation, only slower than fp32.  Scores, calibration
signals and losses are always accumulated in at least float32, whatever the model's dtype.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_dtype("bfloat16", "float32")
torch.bfloat16
>>> resolve_dtype(None, "float16"), resolve_dtype(None, None)
(torch.float16, torch.float32)
"""

from __future__ import annotations

import re

import torch

from ..errors import UsageError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_NAMES = "cpu, cuda or cuda:N (N the index of a CUDA device)"
_CUDA = re.compile(r"cuda(?::(\d+))?")


def default_device() -> torch.device:
    """The device used without ``--device``: the current CUDA device when there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(text: str | None) -> torch.device:
    """The ``torch.device`` that ``--device text`` names (``None``: :func:`default_device`).

    ``cuda`` is the current CUDA device with its index made explicit, so that it compares equal
    to a tensor's device.  An unknown name, CUDA on a machine without it, and an index beyond the
    machine's devices are one-line :class:`~pruners.errors.UsageError`\\ s.

    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: --device 'tpu' is not a device depprune can use; expected cpu, cuda or cuda:N (N the index of a CUDA device)
    >>> resolve_device("cuda:-1")
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: --device 'cuda:-1' is not a device depprune can use; expected cpu, cuda or cuda:N (N the index of a CUDA device)
    """
    if text is None:
        return default_device()
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise UsageError(f"--device {text!r} is not a device depprune can use; expected {DEVICE_NAMES}")
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {text}: no CUDA device is available here (torch.cuda.is_available() is False); use --device cpu"
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if match.group(1) is None else int(match.group(1))
    if index >= count:
        have = ", ".join(f"cuda:{i}" for i in range(count))
        raise UsageError(f"--device {text}: there is no CUDA device {index}; this machine has {count} ({have})")
    return torch.device("cuda", index)


def resolve_dtype(text: str | None, checkpoint_dtype: str | torch.dtype | None) -> torch.dtype:
    """The ``torch.dtype`` that ``--dtype text`` names, or without it (``None``) the checkpoint's.

    ``checkpoint_dtype`` is the ``dtype`` (or ``torch_dtype``) of the checkpoint's ``config.json``:
    a name such as ``"bfloat16"`` (``"torch.bfloat16"`` too), a ``torch.dtype``, or ``None`` /
    ``"auto"`` when the config names none, which means float32.  An unknown ``--dtype``, or a
    checkpoint dtype depprune does not load without one (float64, int8, ...), is a one-line
    :class:`~pruners.errors.UsageError`.

    >>> resolve_dtype("fp16", None)
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: --dtype 'fp16' is not a dtype depprune can use; expected float32, bfloat16 or float16
    >>> resolve_dtype(None, "float64")
    Traceback (most recent call last):
    ...
    pruners.errors.UsageError: the checkpoint's config.json dtype is 'float64', which depprune does not load as it is; pass --dtype float32, bfloat16 or float16
    >>> resolve_dtype(None, torch.bfloat16), resolve_dtype(None, "auto")
    (torch.bfloat16, torch.float32)
    """
    names = "float32, bfloat16 or float16"
    if text is not None:
        if text not in DTYPES:
            raise UsageError(f"--dtype {text!r} is not a dtype depprune can use; expected {names}")
        return DTYPES[text]
    if checkpoint_dtype is None or checkpoint_dtype == "auto":
        return torch.float32
    name = str(checkpoint_dtype).removeprefix("torch.")  # a torch.dtype prints as "torch.bfloat16"
    if name not in DTYPES:
        raise UsageError(
            f"the checkpoint's config.json dtype is {name!r}, which depprune does not load as it is; pass --dtype {names}"
        )
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The name ``--dtype`` and ``config.json`` use for ``dtype``.

    >>> dtype_name(torch.bfloat16)
    'bfloat16'
    """
    return str(dtype).removeprefix("torch.")
