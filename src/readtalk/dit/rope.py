"""3-D rotary position embedding over (frame, row, column) for the A2V-DiT.

The head dimension ``d`` is split in three parts, one per axis, as Wan does:
``d - 4 * (d // 6)`` channels for time and ``2 * (d // 6)`` each for rows and columns
(d = 64 -> 24 + 20 + 20; d = 128 -> 44 + 42 + 42). Within each part, channel pairs
``(2i, 2i + 1)`` are rotated by ``pos * theta ** (-2i / d_axis)``: the interleaved-pair layout
of Flux / Wan (a complex multiply written with real numbers, so it also runs in bf16 and under
``torch.compile``). The rotation is applied in float32 and cast back.

Because a rotation by ``a`` followed by the transpose of a rotation by ``b`` is a rotation by
``b - a``, ``<rope(q, p), rope(k, p + d)>`` depends on ``d`` only: attention sees relative
positions on each axis.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels given to (time, row, column) for a head of ``head_dim`` channels (all even)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3-D RoPE needs an even head dimension >= 6, got {head_dim}")
    s = 2 * (head_dim // 6)
    return head_dim - 2 * s, s, s


def rope_tables(positions: Tensor, head_dim: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """``positions`` (L, 3) (frame, row, column), any real values -> ``(cos, sin)``, each
    (L, head_dim / 2) float32, in the channel-pair order ``apply_rope`` expects."""
    angles = []
    pos = positions.to(torch.float32)
    for axis, dim in enumerate(rope_axis_dims(head_dim)):
        inv = theta ** (
            -torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim
        )
        angles.append(pos[:, axis, None] * inv)  # (L, dim / 2)
    a = torch.cat(angles, dim=-1)
    return a.cos(), a.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (..., L, head_dim) by the tables (L, head_dim / 2); same dtype out."""
    xf = x.to(torch.float32).unflatten(-1, (-1, 2))
    x0, x1 = xf.unbind(-1)
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def sequence_positions(
    f: int, h: int, w: int, ref_pos: float = 0.0, device: torch.device | str | None = None
) -> Tensor:
    """(frame, row, column) of each token of ``[reference frame ; f video frames]``, each
    frame an h x w grid in row-major order: (L, 3) float32, L = (1 + f) * h * w. The reference
    frame sits at time ``ref_pos``; video frame i (0-based) at time i + 1."""
    tpos = torch.cat(
        (
            torch.full((1,), float(ref_pos), device=device),
            torch.arange(1, f + 1, dtype=torch.float32, device=device),
        )
    )
    rows = torch.arange(h, dtype=torch.float32, device=device)
    cols = torch.arange(w, dtype=torch.float32, device=device)
    grid = torch.meshgrid(tpos, rows, cols, indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)
