"""Where and in which precision the models run: ``--device`` / ``--dtype`` resolved once."""

from __future__ import annotations

import torch

from readtalk.errors import ReadtalkError

DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or a torch dtype; None: float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in DTYPES:
        raise ReadtalkError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, str(dtype))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device; ``None`` / ``"auto"``: CUDA when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ReadtalkError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReadtalkError("--device cuda was asked for but no CUDA GPU is available")
    return dev
