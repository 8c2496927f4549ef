"""Training for the rolling schedule (docs/streaming.md): DiT windows of the shape a live
session samples, and guidance distillation so that one model pass per step replaces
Split-CFG's three.

**Windows.** The rolling schedule generates one 8-frame latent at a time, after at most
``context`` latents it has already made (``diffusion.next_rolling``); the first window of a
video is its first two latents, both new. ``rolling_window`` cuts such windows out of the
cache's longer ones: with probability ``p_first`` the first two latents of a window with no
context, else ``m`` context latents (uniform in ``1..context``) and one new latent, at a random
place (the same ``m`` for the whole batch, so the rows stack). The speech codes are cut
alike; they must be per-latent codes (a cache made with ``--speech-context``) for a cut window
to see what a live session sees.

**Distillation.** With a teacher (a DiT release), the target of a row is the teacher's
Split-CFG velocity at the same noisy input, timesteps and condition (``Guidance.velocity``,
three passes without gradients) instead of the data's ``eps - z0``: the student learns the
guided velocity and samples with ``guidance="none"``, a third of the DiT's work per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from readtalk.diffusion import Guidance

__all__ = ["rolling_window", "teacher_velocity"]


def rolling_window(batch: dict, context: int, p_first: float, gen: torch.Generator) -> int:
    """Cut ``batch``'s ``latent`` (B, C, f, h, w) and ``audio`` (B, f, A) in place to a rolling
    window; returns its number of context latents ``m`` (0: a first window of two new
    latents). Draws, in order: first-or-not, ``m``, one start per row."""
    z = batch["latent"]
    b, f = z.shape[0], z.shape[2]
    if f < 2:
        raise ValueError(f"rolling windows need >= 2 latents per cached window, got {f}")
    first = float(torch.rand((), generator=gen)) < p_first
    if first:
        m, n = 0, 2
        starts = torch.zeros(b, dtype=torch.long)
    else:
        m = int(torch.randint(1, min(context, f - 1) + 1, (), generator=gen))
        n = m + 1
        starts = torch.randint(0, f - n + 1, (b,), generator=gen)
    idx = starts[:, None] + torch.arange(n)  # (B, n)
    batch["latent"] = torch.stack([z[i, :, idx[i]] for i in range(b)])
    batch["audio"] = torch.stack([batch["audio"][i, idx[i]] for i in range(b)])
    return m


@torch.no_grad()
def teacher_velocity(
    teacher: torch.nn.Module,
    zt: Tensor,
    t: Tensor,
    ref: Tensor,
    audio: Tensor,
    guidance: Guidance,
) -> Tensor:
    """The teacher's guided velocity (B, C, f, h, w) at ``zt`` with timesteps ``t`` (B, 1 + f)
    and the full condition."""

    def model_fn(z: Tensor, tt: Tensor, rm: Tensor, am: Tensor, cond: dict) -> Tensor:
        return teacher(z, tt, cond["ref"], cond["audio"], rm, am)

    return guidance.velocity(model_fn, zt, t, {"ref": ref, "audio": audio}).float()
