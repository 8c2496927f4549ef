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

**Self rollout.** A live session's context latents are the model's own, not the encoder's;
their small errors compound over a minute (docs/streaming.md, "Drift"). With ``rollout = K``,
a fraction ``p_self`` of the windows are cut ``k`` latents longer (``k`` uniform in ``1..K``);
the model, without gradients, rolls out those ``k`` latents itself exactly as a session does
(``ans_sample`` after the ``m`` latents before each, ``rollout_steps`` Euler steps, one pass,
``motion_floor``), and the training window is the last ``m + 1`` latents with the made ones as
its context (``self_rollout``). Its target is the teacher's velocity at the same noisy new
latent with the *true* context: what the model makes after the true latents, whatever its own
context became, so errors stop compounding; ``rollout_data`` mixes in the data's target (the
true new latent) by that share.
"""

from __future__ import annotations

import torch
from torch import Tensor

from readtalk.diffusion import Guidance, ans_sample, timestep_schedule

__all__ = ["model_velocity", "rolling_window", "self_rollout", "teacher_velocity"]


def model_velocity(model: torch.nn.Module):
    """A DiT as ``readtalk.diffusion``'s ``VelocityModel``: the reference latent and speech
    codes come from ``cond``."""

    def model_fn(z: Tensor, t: Tensor, rm: Tensor, am: Tensor, cond: dict) -> Tensor:
        return model(z, t, cond["ref"], cond["audio"], rm, am)

    return model_fn


def rolling_window(
    batch: dict,
    context: int,
    p_first: float,
    gen: torch.Generator,
    rollout: int = 0,
    p_self: float = 0.0,
) -> tuple[int, int]:
    """Cut ``batch``'s ``latent`` (B, C, f, h, w) and ``audio`` (B, f, A) in place to a rolling
    window; returns ``(m, k)``: its number of context latents ``m`` (0: a first window of two
    new latents) and ``k``, the latents in front of them for the model to roll out itself
    (``self_rollout``; the cut is ``k + m + 1`` long). Draws, in order: first-or-not, ``m``,
    then with ``rollout > 0`` rollout-or-not (``p_self``) and ``k`` (uniform in
    ``1..rollout``, as the window allows), then one start per row."""
    z = batch["latent"]
    b, f = z.shape[0], z.shape[2]
    if f < 2:
        raise ValueError(f"rolling windows need >= 2 latents per cached window, got {f}")
    first = float(torch.rand((), generator=gen)) < p_first
    k = 0
    if first:
        m, n = 0, 2
        starts = torch.zeros(b, dtype=torch.long)
    else:
        m = int(torch.randint(1, min(context, f - 1) + 1, (), generator=gen))
        most = min(rollout, f - m - 1)
        if most > 0 and float(torch.rand((), generator=gen)) < p_self:
            k = int(torch.randint(1, most + 1, (), generator=gen))
        n = k + m + 1
        starts = torch.randint(0, f - n + 1, (b,), generator=gen)
    idx = starts[:, None] + torch.arange(n)  # (B, n)
    batch["latent"] = torch.stack([z[i, :, idx[i]] for i in range(b)])
    batch["audio"] = torch.stack([batch["audio"][i, idx[i]] for i in range(b)])
    return m, k


@torch.no_grad()
def self_rollout(
    model: torch.nn.Module,
    latent: Tensor,
    ref: Tensor,
    audio: Tensor,
    m: int,
    k: int,
    gen: torch.Generator,
    *,
    steps: int = 3,
    shift: float = 1.0,
    motion_floor: float = 0.0,
) -> Tensor:
    """The model's own version of a cut window: ``latent`` (B, C, k + m + 1, h, w) holds true
    latents; the ``k`` after the first ``m`` are replaced, one at a time, by what ``model``
    (a one-pass DiT, guidance "none") samples after the ``m`` before each with its speech codes
    ``audio`` (B, k + m + 1, A), as a live session does. Returns the last ``m + 1`` latents,
    whose context (the first ``m``) is then made by the model where it lies past ``m``. The
    noise comes from ``gen`` (CPU) and is moved to ``latent``'s device."""
    if m < 1 or k < 1 or latent.shape[2] != k + m + 1 or audio.shape[1] != k + m + 1:
        raise ValueError(f"a rollout of k={k} after m={m} needs {k + m + 1} latents and codes")
    sched = timestep_schedule(steps, shift).to(latent.device)
    model_fn, g = model_velocity(model), Guidance("none")
    shape = (latent.shape[0], latent.shape[1], m + 1, *latent.shape[3:])  # one window
    seq = latent.clone()
    for j in range(m, m + k):
        noise = torch.randn(shape, generator=gen).to(latent)
        cond = {"ref": ref, "audio": audio[:, j - m : j + 1]}
        z = ans_sample(
            model_fn, noise, sched, motion=seq[:, :, j - m : j], cond=cond, guidance=g,
            motion_floor=motion_floor,
        )  # fmt: skip
        seq[:, :, j] = z[:, :, -1]
    return seq[:, :, k:]


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
    cond = {"ref": ref, "audio": audio}
    return guidance.velocity(model_velocity(teacher), zt, t, cond).float()
