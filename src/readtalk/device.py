"""Where and in which precision the models run: ``--device`` / ``--dtype`` resolved once."""

from __future__ import annotations

import torch

from readtalk.errors import ReadtalkError

DTYPES = ("float32", "bfloat16", "float16")


def fast_bf16(device: str | torch.device | None = "cpu") -> bool:
    """Whether ``device`` has bf16 matrix units, so that bf16 runs faster than float32: a
    CUDA GPU that supports bf16, or a CPU with AMX tiles or AVX-512 BF16 (Sapphire Rapids and
    later Xeons; recent AMD EPYCs). An AVX2-only CPU emulates bf16 products at a few GFLOP/s,
    some fifty times slower than float32 (docs/speed.md)."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())


def resolve_dtype(
    dtype: str | torch.dtype | None, device: str | torch.device | None = "cpu"
) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or a torch dtype; None: float32);
    ``"auto"``: bfloat16 where ``device`` computes it fast (``fast_bf16``), else float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
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
