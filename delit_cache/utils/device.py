"""The one place that turns ``--device`` and ``--dtype`` values into torch objects.

Devices: ``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``; under a
multi-process launch ``cuda`` (and ``auto`` on a CUDA machine) means this process's GPU.
Dtypes: ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16`` (where allowed).
Anything else is one ``DelitError`` line.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from delit_cache.utils.errors import DelitError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")
DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
FULL_AND_BF16 = (torch.float32, torch.bfloat16)  # what the VAE and the heads accept


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def auto_device_type() -> str:
    """``cuda`` when available, else ``mps`` when available, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if _mps_available() else "cpu"


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds this device up: a CUDA GPU with bf16 support, or a
    CPU with AMX or AVX512-BF16 units (read from ``/proc/cpuinfo``; elsewhere False)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str | torch.device | None = "auto", local_rank: int | None = None):
    """``device`` (a name above, a ``torch.device`` or None = auto) -> a checked ``torch.device``.

    ``local_rank``: under a multi-process launch, the GPU of this process (used when the name
    is ``cuda`` or ``auto`` without an index).
    """
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = "auto" if device is None else str(device).strip().lower()
    match = _DEVICE.match(name)
    if match is None or (match.group(1) in ("auto", "cpu") and match.group(2) is not None):
        raise DelitError(f"--device {device}: expected {DEVICE_CHOICES}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        kind = auto_device_type()
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DelitError(f"--device {device}: CUDA is not available on this machine")
        if index is None and local_rank is not None:
            index = str(local_rank)
        if index is not None and int(index) >= torch.cuda.device_count():
            raise DelitError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", int(index)) if index is not None else torch.device("cuda")
    if kind == "mps" and not _mps_available():
        raise DelitError(f"--device {device}: MPS is not available on this machine")
    return torch.device(kind)


def resolve_dtype(
    dtype: str | torch.dtype, allowed: tuple[torch.dtype, ...] = FULL_AND_BF16
) -> torch.dtype:
    """``dtype`` (a name above or a ``torch.dtype``) -> the torch dtype, if in ``allowed``."""
    resolved = dtype if isinstance(dtype, torch.dtype) else DTYPE_NAMES.get(str(dtype).lower())
    if resolved not in allowed:
        names = ", ".join(dtype_name(d) for d in allowed)
        raise DelitError(f"--dtype {dtype_name(dtype)}: expected one of {names}")
    return resolved


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name of a dtype (``torch.bfloat16`` -> ``bfloat16``); strings unchanged."""
    return str(dtype).replace("torch.", "")
