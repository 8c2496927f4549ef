"""Euler sampling of the rectified-flow ODE, classifier-free guidance, condition dropout.

**The model protocol** (``VelocityModel``). ``readtalk.diffusion`` never sees a network; it
calls any function ::

    model_fn(z, t, ref_mask, audio_mask, cond) -> v
      z          (B, C, f, h, w)  noisy video latents (the reference is *not* in z)
      t          (B, r + f)       per-frame timesteps; the r (= 1) reference columns are 0
      ref_mask   (B,) bool        True = use the reference portrait, False = drop it
      audio_mask (B,) bool        True = use the speech codes, False = drop them
      cond       Mapping[str, Tensor]  everything else the model needs (reference latent,
                                  speech codes, ...), each with the batch on axis 0
      v          (B, C, f, h, w)  predicted velocity eps - z_0 of the video frames

For guidance the batch is repeated: ``guided_velocity`` stacks the branches along the batch
(``[uncond ; ref-only ; full]`` for Split-CFG), sets the masks per row and repeats every tensor
of ``cond`` to match, then makes one call. A wrapper for ``readtalk.dit.A2VDiT`` is ::

    lambda z, t, ref_mask, audio_mask, cond: dit(
        z, t, cond["ref"], cond["audio"], ref_mask, audio_mask)

**Guidance.** Split-CFG (READ; the two-condition guidance of InstructPix2Pix, Brooks et al.
2023, arXiv 2211.09800, eq. 3, in velocity form)::

    v = v_uncond + alpha (v_ref - v_uncond) + beta (v_full - v_ref)

with ``alpha`` the reference scale (2.0) and ``beta`` the audio scale (6.0); Joint-CFG (Ho &
Salimans 2022, arXiv 2207.12598) ``v = v_uncond + gamma (v_full - v_uncond)``; and ``"none"``
(the conditional prediction, one pass).

**Samplers** share one signature and keep no state (k-diffusion style)::

    sampler(model_fn, noise, schedule, *, cond=None, guidance=Guidance(), ref_frames=1,
            callback=None, ...) -> z_0

``schedule`` is a decreasing 1-D tensor of times (``flow.timestep_schedule``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from readtalk.diffusion.flow import expand_timesteps
from readtalk.errors import ReadtalkError

__all__ = [
    "DEFAULT_GUIDANCE",
    "GUIDANCE_MODES",
    "Guidance",
    "GuidanceMode",
    "StepCallback",
    "VelocityModel",
    "check_schedule",
    "condition_dropout",
    "euler_step",
    "frame_timesteps",
    "guided_velocity",
    "joint_cfg",
    "sample_euler",
    "split_cfg",
    "tile_cond",
]

GuidanceMode = Literal["split", "joint", "none"]
# READ's guidance scales: Split-CFG alpha (reference) and beta (audio), Joint-CFG gamma
DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_GAMMA = 2.0, 6.0, 6.0
GUIDANCE_MODES: tuple[str, ...] = ("split", "joint", "none")


class VelocityModel(Protocol):
    """``model_fn(z, t, ref_mask, audio_mask, cond) -> v``; see the module docstring."""

    def __call__(
        self,
        z: Tensor,
        t: Tensor,
        ref_mask: Tensor,
        audio_mask: Tensor,
        cond: Mapping[str, Any],
    ) -> Tensor: ...


# Called after every Euler step with (step index i, the clip's latents at schedule[i + 1]).
StepCallback = Callable[[int, Tensor], None]


# ------------------------------------------------------------------------------------ guidance


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance settings.

    ``mode``: ``"split"`` (3 passes: uncond, ref-only, ref + audio; scales ``alpha``, ``beta``),
    ``"joint"`` (2 passes: uncond, full; scale ``gamma``) or ``"none"`` (1 pass, conditional).
    ``batched``: run the passes as one model call on a stacked batch (fast) or one call each
    (less memory).
    """

    mode: GuidanceMode = "split"
    alpha: float = DEFAULT_ALPHA  # Split-CFG reference scale
    beta: float = DEFAULT_BETA  # Split-CFG audio scale
    gamma: float = DEFAULT_GAMMA  # Joint-CFG scale
    batched: bool = True

    def __post_init__(self) -> None:
        if self.mode not in GUIDANCE_MODES:
            raise ReadtalkError(
                f"guidance mode must be one of {', '.join(GUIDANCE_MODES)}; got {self.mode!r}"
            )
        for name in ("alpha", "beta", "gamma"):
            if not math.isfinite(getattr(self, name)):
                raise ReadtalkError(f"guidance scale {name} must be finite")

    @property
    def passes(self) -> int:
        """Model evaluations per step (3, 2 or 1)."""
        return {"split": 3, "joint": 2, "none": 1}[self.mode]

    def branches(self) -> tuple[tuple[bool, bool], ...]:
        """``(use_ref, use_audio)`` of each pass, in the order the combination takes them."""
        if self.mode == "split":
            return ((False, False), (True, False), (True, True))
        if self.mode == "joint":
            return ((False, False), (True, True))
        return ((True, True),)

    def combine(self, preds: tuple[Tensor, ...]) -> Tensor:
        """Combine the predictions of ``branches()`` into the guided velocity."""
        if self.mode == "split":
            return split_cfg(*preds, alpha=self.alpha, beta=self.beta)
        if self.mode == "joint":
            return joint_cfg(*preds, gamma=self.gamma)
        return preds[0]

    def velocity(
        self, model_fn: VelocityModel, z: Tensor, t: Tensor, cond: Mapping[str, Any] | None
    ) -> Tensor:
        """The guided velocity with these settings (``guided_velocity``)."""
        return _guided_velocity(model_fn, z, t, cond, self)


DEFAULT_GUIDANCE = Guidance()


def split_cfg(
    v_uncond: Tensor,
    v_ref: Tensor,
    v_full: Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
) -> Tensor:
    """Split-CFG: ``v_uncond + alpha (v_ref - v_uncond) + beta (v_full - v_ref)``.

    Each scale acts on one condition's increment: ``alpha`` on what the reference adds to the
    unconditional prediction, ``beta`` on what the audio adds on top of the reference.
    ``alpha = beta = 1`` gives ``v_full``; ``alpha = beta = gamma`` gives Joint-CFG(gamma).
    """
    return v_uncond + alpha * (v_ref - v_uncond) + beta * (v_full - v_ref)


def joint_cfg(v_uncond: Tensor, v_full: Tensor, *, gamma: float = DEFAULT_GAMMA) -> Tensor:
    """Joint-CFG (Ho & Salimans 2022): ``v_uncond + gamma (v_full - v_uncond)``."""
    return v_uncond + gamma * (v_full - v_uncond)


def tile_cond(cond: Mapping[str, Any] | None, k: int, batch: int) -> dict[str, Any]:
    """Repeat every tensor of ``cond`` ``k`` times along axis 0 (``(B, ...)`` -> ``(kB, ...)``).

    Tensors must have the batch ``B`` on axis 0; other values are passed through unchanged.
    """
    out: dict[str, Any] = {}
    for key, value in (cond or {}).items():
        if isinstance(value, Tensor):
            if value.ndim == 0 or value.shape[0] != batch:
                raise ValueError(
                    f"cond[{key!r}] {tuple(value.shape)} must have the batch {batch} on axis 0"
                )
            value = value if k == 1 else torch.cat([value] * k, dim=0)
        out[key] = value
    return out


def guided_velocity(
    model_fn: VelocityModel,
    z: Tensor,
    t: Tensor,
    cond: Mapping[str, Any] | None = None,
    mode: GuidanceMode = "split",
    alpha: float = 2.0,
    beta: float = 6.0,
    gamma: float = 6.0,
    *,
    batched: bool = True,
) -> Tensor:
    """Guided velocity at ``z (B, C, f, h, w)``, ``t (B, r + f)``. Returns ``(B, C, f, h, w)``.

    Evaluates the branches of the guidance ``mode`` (see ``Guidance``) and combines them with
    ``split_cfg`` / ``joint_cfg``. With ``batched`` the branches are stacked along the batch
    (``[uncond ; ref-only ; full]``, each ``B`` rows) and the model is called once.
    """
    g = Guidance(mode=mode, alpha=alpha, beta=beta, gamma=gamma, batched=batched)
    return _guided_velocity(model_fn, z, t, cond, g)


def _guided_velocity(
    model_fn: VelocityModel, z: Tensor, t: Tensor, cond: Mapping[str, Any] | None, g: Guidance
) -> Tensor:
    b = z.shape[0]
    if t.shape[0] != b:
        raise ValueError(f"timesteps {tuple(t.shape)} do not match the batch {b}")
    branches = g.branches()

    def masks(k_branches: tuple[tuple[bool, bool], ...]) -> tuple[Tensor, Tensor]:
        ref = torch.tensor([r for r, _ in k_branches], device=z.device).repeat_interleave(b)
        aud = torch.tensor([a for _, a in k_branches], device=z.device).repeat_interleave(b)
        return ref, aud

    if g.batched or len(branches) == 1:
        k = len(branches)
        ref_mask, audio_mask = masks(branches)
        zk = z if k == 1 else torch.cat([z] * k, dim=0)
        tk = t if k == 1 else torch.cat([t] * k, dim=0)
        v = model_fn(zk, tk, ref_mask, audio_mask, tile_cond(cond, k, b))
        preds = tuple(v.chunk(k, dim=0)) if k > 1 else (v,)
    else:
        tiled = tile_cond(cond, 1, b)
        preds = tuple(model_fn(z, t, *masks((br,)), tiled) for br in branches)
    for p in preds:
        if p.shape != z.shape:
            raise ValueError(f"model returned {tuple(p.shape)}, expected {tuple(z.shape)}")
    return g.combine(preds)


def condition_dropout(
    batch: int,
    generator: torch.Generator | None = None,
    p_drop_audio: float = 0.1,
    p_drop_ref: float = 0.0,
    p_drop_both: float = 0.1,
    *,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row condition keep masks for training with classifier-free guidance.

    Each row draws one of four exclusive events: both conditions dropped (``p_drop_both``;
    teaches ``v_uncond``), audio dropped only (``p_drop_audio``; teaches the Split-CFG
    ``v_ref`` branch), reference dropped only (``p_drop_ref``; no guidance branch needs it, 0
    by default), or nothing dropped. Returns ``(ref_keep, audio_keep)``, each ``(batch,)``
    bool, True = keep, as the model protocol takes them.
    """
    probs = (p_drop_both, p_drop_ref, p_drop_audio)
    if any(not (0.0 <= p <= 1.0) for p in probs) or sum(probs) > 1.0 + 1e-9:
        raise ReadtalkError(
            "condition-dropout probabilities must lie in [0, 1] and sum to at most 1; got "
            f"audio {p_drop_audio}, ref {p_drop_ref}, both {p_drop_both}"
        )
    if device is None and generator is not None:
        device = generator.device
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    both = u < p_drop_both
    ref_only = (u >= p_drop_both) & (u < p_drop_both + p_drop_ref)
    audio_only = (u >= p_drop_both + p_drop_ref) & (u < p_drop_both + p_drop_ref + p_drop_audio)
    return ~(both | ref_only), ~(both | audio_only)


# ------------------------------------------------------------------------------------ sampling


def check_schedule(schedule: Tensor) -> list[float]:
    """Validate a sampling schedule (1-D, >= 2 entries, strictly decreasing, in [0, 1]) and
    return it as Python floats."""
    if schedule.ndim != 1 or schedule.numel() < 2:
        raise ValueError(f"schedule must be 1-D with >= 2 times, got {tuple(schedule.shape)}")
    ts = [float(x) for x in schedule.tolist()]
    if any(not (0.0 <= x <= 1.0) for x in ts) or any(a <= b for a, b in pairwise(ts)):
        raise ValueError(f"schedule must decrease strictly within [0, 1], got {ts}")
    return ts


def euler_step(z: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float) -> Tensor:
    """One Euler step of ``dz/dt = v``: ``z + (t_next - t) v`` (``t`` scalar, ``(B,)`` or
    per frame ``(B, f)``)."""
    dt = expand_timesteps(t_next, z) - expand_timesteps(t, z)
    return z + dt * v.to(z.dtype)


def frame_timesteps(
    batch: int,
    levels: list[tuple[int, float]],
    *,
    ref_frames: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Model timesteps ``(B, r + sum(n))``: ``r`` zeros (the reference), then ``n`` columns at
    each ``(n, level)`` of ``levels``."""
    if ref_frames < 0:
        raise ValueError(f"reference frames must be >= 0, got {ref_frames}")
    row = [0.0] * ref_frames
    for n, level in levels:
        row += [level] * n
    return torch.tensor(row, dtype=dtype, device=device).expand(batch, -1).contiguous()


def sample_euler(
    model_fn: VelocityModel,
    noise: Tensor,
    schedule: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    guidance: Guidance = DEFAULT_GUIDANCE,
    ref_frames: int = 1,
    callback: StepCallback | None = None,
) -> Tensor:
    """Euler sampler for the rectified-flow ODE (Liu et al. 2022; Karras et al. 2022, Alg. 1
    without churn): ``z_{t_{i+1}} = z_{t_i} + (t_{i+1} - t_i) v(z_{t_i}, t_i)``.

    ``noise (B, C, f, h, w)`` is ``z`` at ``schedule[0]`` (1 for a full sampling run); every
    video frame shares the time ``t_i`` (the reference columns are 0). Returns ``z`` at
    ``schedule[-1]`` (the clean latents when it ends at 0), same shape and dtype as ``noise``.
    """
    ts = check_schedule(schedule)
    tdtype = schedule.dtype if schedule.is_floating_point() else torch.float32
    b, f = noise.shape[0], noise.shape[2]
    z = noise
    for i, (t, t_next) in enumerate(pairwise(ts)):
        tt = frame_timesteps(b, [(f, t)], ref_frames=ref_frames, device=z.device, dtype=tdtype)
        v = guidance.velocity(model_fn, z, tt, cond)
        z = euler_step(z, v, t, t_next)
        if callback is not None:
            callback(i, z)
    return z
