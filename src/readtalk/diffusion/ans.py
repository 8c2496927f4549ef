"""The asynchronous noise scheduler (ANS) of READ (arXiv 2508.03457), training and inference.

**Training: asynchronous add-noise** (``ans_train_timesteps``). Per-frame timesteps for the
sequence ``[reference ; motion frame(s) ; later frames]``: the reference at 0, the first
``motion_frames`` latent frames of the clip at ``t1``, every later frame at ``t2``, with
``t1 < t2``; ``t2`` comes from the shifted logit-normal density. How ``t1`` relates to ``t2``:

* ``"scaled"`` (default): ``t1 = u t2``, ``u ~ U(0, 1)`` -- every gap, the inference one included;
* ``"step"``: ``t2`` snapped to the nearest time ``t_i`` (``i < n``) of the inference schedule
  and ``t1 = t_{i+1}``, exactly the inference layout (give the inference ``steps`` / shift);
* ``"zero"``: ``t1 = 0`` (clean motion frames; they then carry no loss, see
  ``flow.frame_loss_mask``);
* ``"sync"``: ``t1 = t2`` (plain training, the ablation).

Each row gets the asynchronous layout with probability ``p_ans``; the other rows have every
frame at ``t2`` (the first clip of a video has no motion frame and is sampled that way).

**Inference: asynchronous motion-guided generation** (``ans_sample``). Long audio is cut into
clips of the training length (``plan_clips``). The first clip is sampled plainly. A later
clip's first ``m`` latent frames are the previous clip's last ``m`` clean latents ("motion").
At Euler step ``i`` the new frames are at ``t_i`` and the motion frames are re-noised from
their clean latents to the *next* level ``t_{i+1}``, always one step ahead, so they guide the
new frames; their predicted velocity is discarded. Their noise is ``noise[:, :, :m]``, drawn
once per clip with the rest, so a clip is a deterministic function of its noise. Switches for
the ablation (``motion_mode``): ``"async"`` (READ), ``"sync"`` (motion at ``t_i`` like the
new frames), ``"clean"`` (motion at 0 throughout; pairs with training mode ``"zero"``) and
``"plain"`` (plain chunking: no motion frame at all; the clip's first ``m`` latents are
generated from noise and dropped at stitching, so the frame timeline and compute stay the
same as with ANS).

**Clip planning** (``plan_clips``), with the VAE's rule (``F = 8k + 1`` frames <-> ``k + 1``
latents; latent ``j >= 1`` covers frames ``8j - 7 .. 8j``, latent 0 frame 0). A clip of ``f``
latents decodes to ``F_c = 8(f - 1) + 1`` frames. Its ``m`` motion latents decode to its first
``8(m - 1) + 1`` frames, which repeat the previous clip's last ones in time, so later clips
start ``8(f - m)`` frames after the previous one and contribute ``F_c - (8m - 7) = 8(f - m)``
new frames (120 for f = 16, m = 1; 112 for m = 2); the first clip contributes ``F_c``. In
latent terms clip ``k`` is the global latent window ``[k (f - m), k (f - m) + f)``, and clip
``k``'s local latent ``j`` covers global frames ``8 k (f - m) + 8j - 7 .. + 8j``. With
``m = 0`` (plain chunking) clips are disjoint: stride ``F_c``. The output has exactly
``total_frames`` frames, one per 40 ms of audio: the decoded frames of each clip in
``[keep_start, keep_stop)`` are kept (``stitch_frames``).

The final clip: by default (``last="pad"``) it is a full clip whose audio runs past the end
(the caller pads the audio with silence up to ``plan[-1].frame_stop`` frames) and whose surplus
frames are trimmed: every clip then has the training length the DiT saw. ``last="short"``
instead shortens it to the fewest latents that cover the rest (< 8 surplus frames; faster, but a
length the model may not have been trained on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import torch
from torch import Tensor

from readtalk.diffusion.flow import (
    DEFAULT_SHIFT,
    DEFAULT_STEPS,
    add_noise,
    sample_timesteps,
    timestep_schedule,
)
from readtalk.diffusion.sampling import (
    DEFAULT_GUIDANCE,
    Guidance,
    StepCallback,
    VelocityModel,
    check_schedule,
    euler_step,
    frame_timesteps,
    sample_euler,
)
from readtalk.errors import ReadtalkError

__all__ = [
    "ANS_TRAIN_MODES",
    "MOTION_MODES",
    "AnsTrainMode",
    "ClipWindow",
    "MotionMode",
    "ans_sample",
    "ans_train_timesteps",
    "iter_clips",
    "next_clip",
    "next_rolling",
    "overlap_frames",
    "plan_clips",
    "plan_rolling",
    "sample_clip",
    "stitch_frames",
]

AnsTrainMode = Literal["scaled", "step", "zero", "sync"]
ANS_TRAIN_MODES: tuple[str, ...] = ("scaled", "step", "zero", "sync")
MotionMode = Literal["async", "sync", "clean", "plain"]
MOTION_MODES: tuple[str, ...] = ("async", "sync", "clean", "plain")
TEMPORAL_FACTOR = 8  # the VAE's temporal compression


# ------------------------------------------------------------------------------------ training


def ans_train_timesteps(
    batch: int,
    frames: int,
    generator: torch.Generator | None = None,
    *,
    mode: AnsTrainMode = "scaled",
    p_ans: float = 0.75,
    motion_frames: int = 1,
    steps: int = DEFAULT_STEPS,
    shift: float = DEFAULT_SHIFT,
    schedule_shift: float | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    ref_frames: int = 1,
    device: torch.device | str | None = None,
) -> Tensor:
    """ANS training timesteps (READ's asynchronous add-noise). Returns ``(B, r + frames)``.

    Columns: ``ref_frames`` zeros, ``motion_frames`` columns at ``t1``, ``frames -
    motion_frames`` columns at ``t2``. ``t2 ~ sample_timesteps(mean, std, shift)`` per row;
    ``t1`` by ``mode`` (module docstring) in the rows drawn with probability ``p_ans``, else
    ``t1 = t2``. ``steps`` and ``schedule_shift`` (default: ``shift``) give the inference
    schedule that mode ``"step"`` snaps to. Random draws, in order: ``t2``, the ANS rows,
    then ``u`` (mode ``"scaled"`` only).
    """
    if mode not in ANS_TRAIN_MODES:
        raise ReadtalkError(f"ANS mode must be one of {', '.join(ANS_TRAIN_MODES)}; got {mode!r}")
    if not 0.0 <= p_ans <= 1.0:
        raise ReadtalkError(f"ANS probability must lie in [0, 1], got {p_ans}")
    if motion_frames < 1 or frames <= motion_frames:
        raise ReadtalkError(
            f"ANS needs 1 <= motion frames < frames; got {motion_frames} motion of {frames}"
        )
    if ref_frames < 0:
        raise ReadtalkError(f"reference frames must be >= 0, got {ref_frames}")
    if device is None and generator is not None:
        device = generator.device
    t2 = sample_timesteps(batch, generator, mean, std, shift, device=device)  # (B,)
    use = torch.rand(batch, generator=generator, device=device) < p_ans  # (B,)
    zero = torch.zeros_like(t2)
    if mode == "scaled":
        u = torch.rand(batch, generator=generator, device=device)
        t1 = torch.minimum(u * t2, torch.nextafter(t2, zero))  # strictly below t2
    elif mode == "step":
        sched = timestep_schedule(
            steps, shift if schedule_shift is None else schedule_shift, device=t2.device
        )  # (n + 1,)
        idx = (t2[:, None] - sched[None, :-1]).abs().argmin(dim=1)  # nearest t_i, i < n
        t2 = torch.where(use, sched[idx], t2)
        t1 = sched[idx + 1]
    elif mode == "zero":
        t1 = zero
    else:
        t1 = t2
    t1 = torch.where(use, t1, t2)
    return torch.cat(
        [
            zero[:, None].expand(batch, ref_frames),
            t1[:, None].expand(batch, motion_frames),
            t2[:, None].expand(batch, frames - motion_frames),
        ],
        dim=1,
    )


# ----------------------------------------------------------------------------------- inference


def ans_sample(
    model_fn: VelocityModel,
    noise: Tensor,
    schedule: Tensor,
    *,
    motion: Tensor | None = None,
    motion_mode: MotionMode = "async",
    cond: Mapping[str, Any] | None = None,
    guidance: Guidance = DEFAULT_GUIDANCE,
    ref_frames: int = 1,
    callback: StepCallback | None = None,
    motion_floor: float = 0.0,
) -> Tensor:
    """Sample one clip with asynchronous motion guidance (READ's ANS inference).

    ``noise (B, C, f, h, w)``: the clip's noise, all ``f`` latent frames (the first ``m`` serve
    as the motion frames' noise). ``motion (B, C, m, h, w)``: clean latents of the clip's first
    ``m`` frames (the previous clip's last ones), ``m < f``; None = plain sampling
    (``sample_euler``). Euler steps over ``schedule`` (``t_0 = 1 > ... > t_n = 0``); at step
    ``i`` the model sees timesteps ``[0]*r + [s_i]*m + [t_i]*(f - m)`` with the motion level
    ``s_i = t_{i+1}`` (``"async"``), ``t_i`` (``"sync"``) or 0 (``"clean"``), and motion
    inputs ``add_noise(motion, noise[:, :, :m], s_i)``; only the new frames are updated.
    ``motion_floor``: the motion level never drops below ``motion_floor`` while the new frames
    are above it (``s_i = max(s_i, min(motion_floor, t_i))``): a motion latent the model made
    itself is then trusted less, so a rolling window leans on the reference more
    (docs/streaming.md, "Drift").
    ``"plain"`` ignores ``motion``. Returns ``(B, C, f, h, w)`` whose first ``m`` frames are
    ``motion`` itself.
    """
    if motion_mode not in MOTION_MODES:
        raise ReadtalkError(
            f"motion mode must be one of {', '.join(MOTION_MODES)}; got {motion_mode!r}"
        )
    if motion is None or motion_mode == "plain":
        return sample_euler(
            model_fn,
            noise,
            schedule,
            cond=cond,
            guidance=guidance,
            ref_frames=ref_frames,
            callback=callback,
        )
    b, f = noise.shape[0], noise.shape[2]
    m = motion.shape[2] if motion.ndim == noise.ndim else -1
    if (
        m < 1
        or m >= f
        or motion.shape[:2] != noise.shape[:2]
        or motion.shape[3:] != noise.shape[3:]
    ):
        raise ValueError(
            f"motion {tuple(motion.shape)} must be (B, C, m, ...) with 1 <= m < f for noise "
            f"{tuple(noise.shape)}"
        )
    ts = check_schedule(schedule)
    tdtype = schedule.dtype if schedule.is_floating_point() else torch.float32
    motion = motion.to(noise.dtype)
    eps_m = noise[:, :, :m]  # (B, C, m, h, w), fixed for the whole clip
    z = noise[:, :, m:]  # (B, C, f - m, h, w) the new frames
    for i, (t, t_next) in enumerate(pairwise(ts)):
        s = {"async": t_next, "sync": t, "clean": 0.0}[motion_mode]
        s = max(float(s), min(float(motion_floor), float(t)))
        zm = add_noise(motion, eps_m, s)
        levels = [(m, s), (f - m, t)]
        tt = frame_timesteps(b, levels, ref_frames=ref_frames, device=z.device, dtype=tdtype)
        v = guidance.velocity(model_fn, torch.cat([zm, z], dim=2), tt, cond)  # (B, C, f, h, w)
        z = euler_step(z, v[:, :, m:], t, t_next)
        if callback is not None:
            callback(i, torch.cat([add_noise(motion, eps_m, t_next), z], dim=2))
    return torch.cat([motion, z], dim=2)


# ---------------------------------------------------------------------------------- clip plans


def overlap_frames(motion_latents: int, temporal_factor: int = TEMPORAL_FACTOR) -> int:
    """Decoded frames of a later clip that repeat the previous clip: ``8(m - 1) + 1`` (0 for
    ``m = 0``)."""
    return 0 if motion_latents == 0 else temporal_factor * (motion_latents - 1) + 1


@dataclass(frozen=True)
class ClipWindow:
    """One clip of a long-video plan. Frame indices are global video frames (25 fps)."""

    index: int
    frame_start: int  # global frame of the clip's decoded frame 0 (its audio starts here)
    latents: int  # latent frames of the clip
    motion_latents: int  # leading latents taken from the previous clip (0: none)
    keep_start: int  # first decoded frame (clip-local) that goes to the output
    keep_stop: int  # one past the last kept decoded frame (clip-local)
    temporal_factor: int = TEMPORAL_FACTOR

    @property
    def frames(self) -> int:
        """Decoded frames of the clip: ``8(latents - 1) + 1``."""
        return 1 + self.temporal_factor * (self.latents - 1)

    @property
    def frame_stop(self) -> int:
        """One past the clip's last frame; audio needed (padded with silence past the end)."""
        return self.frame_start + self.frames

    @property
    def out_start(self) -> int:
        """First global output frame the clip provides."""
        return self.frame_start + self.keep_start

    @property
    def out_stop(self) -> int:
        """One past the last global output frame the clip provides."""
        return self.frame_start + self.keep_stop

    @property
    def new_latents(self) -> int:
        """Latent frames the clip generates (``latents - motion_latents``)."""
        return self.latents - self.motion_latents


def plan_clips(
    total_frames: int,
    clip_latents: int,
    motion_latents: int = 1,
    *,
    last: Literal["pad", "short"] = "pad",
    temporal_factor: int = TEMPORAL_FACTOR,
) -> list[ClipWindow]:
    """Cut a video of ``total_frames`` frames (one per 40 ms of audio; any length >= 1) into
    clips of ``clip_latents`` latents with ``motion_latents`` motion latents each (module
    docstring). The windows' ``[out_start, out_stop)`` ranges partition ``[0, total_frames)``
    in order; with ``motion_latents = 0`` the clips are disjoint (plain chunking).
    """
    tf = int(temporal_factor)
    if int(total_frames) != total_frames or total_frames < 1:
        raise ReadtalkError(f"a video needs at least one frame, got {total_frames}")
    if int(clip_latents) != clip_latents or clip_latents < 2:
        raise ReadtalkError(f"clips need at least 2 latent frames, got {clip_latents}")
    if int(motion_latents) != motion_latents or not 0 <= motion_latents < clip_latents:
        raise ReadtalkError(
            f"motion latents must lie in [0, {clip_latents - 1}], got {motion_latents}"
        )
    if last not in ("pad", "short"):
        raise ReadtalkError(f"last clip must be 'pad' or 'short', got {last!r}")
    if tf < 1:
        raise ReadtalkError(f"temporal factor must be >= 1, got {temporal_factor}")
    plan: list[ClipWindow] = []
    covered = 0  # output frames so far = global index of the next new frame
    while covered < total_frames:
        window = next_clip(
            len(plan), covered, clip_latents, motion_latents, total_frames - covered,
            last=last, temporal_factor=tf,
        )  # fmt: skip
        plan.append(window)
        covered = window.out_stop
    return plan


def next_clip(
    index: int,
    covered: int,
    clip_latents: int,
    motion_latents: int = 1,
    rest: int | None = None,
    *,
    last: Literal["pad", "short"] = "pad",
    temporal_factor: int = TEMPORAL_FACTOR,
) -> ClipWindow:
    """Clip ``index`` of a plan once ``covered`` output frames exist (``plan_clips`` is these
    windows in a row). ``rest``: the output frames still to come, when known; None while the
    speech is still arriving (streaming), which gives the window a full clip of new frames.
    A window depends on ``rest`` only through its ``keep_stop`` (and, with ``last="short"``,
    its length), so a stream that generates clip ``k`` as soon as its whole audio has arrived
    makes the same clips as the offline plan of the whole speech."""
    tf = int(temporal_factor)
    m = 0 if index == 0 else int(motion_latents)
    ov = overlap_frames(m, tf)
    full = 1 + tf * (clip_latents - 1)
    latents = int(clip_latents)
    if rest is not None and last == "short" and rest < full - ov:
        latents = max(m + 1, 1 + math.ceil((ov + rest - 1) / tf))
    frames = 1 + tf * (latents - 1)
    stop = frames if rest is None else min(frames, ov + rest)
    return ClipWindow(index, covered - ov, latents, m, ov, stop, tf)


def next_rolling(
    index: int,
    covered: int,
    context: int,
    rest: int | None = None,
    *,
    temporal_factor: int = TEMPORAL_FACTOR,
) -> ClipWindow:
    """Window ``index`` of the rolling schedule once ``covered`` output frames exist: window 0
    is the video's first two latents (frames 0-8), both new; window ``k >= 1`` makes global
    latent ``g = k + 1`` (frames ``8g - 7 .. 8g``) after the ``m = min(context, g)`` latents
    before it, which are its motion latents. Each window is a ``ClipWindow`` whose first latent
    stands, as in the clip plans, for one frame (the last of its 8), so its decoded frames
    ``[keep_start, keep_stop)`` are the new latent's. ``rest`` as in ``next_clip``. The
    windows of a video are these in a row until ``covered`` reaches its frames
    (``plan_rolling``)."""
    tf = int(temporal_factor)
    if int(context) != context or context < 1:
        raise ReadtalkError(f"the rolling schedule needs >= 1 context latent, got {context}")
    if index == 0:
        frames = 1 + tf
        return ClipWindow(0, 0, 2, 0, 0, frames if rest is None else min(frames, rest), tf)
    m = min(int(context), index + 1)
    ov = overlap_frames(m, tf)
    frames = 1 + tf * m
    stop = frames if rest is None else min(frames, ov + rest)
    return ClipWindow(index, covered - ov, m + 1, m, ov, stop, tf)


def plan_rolling(
    total_frames: int, context: int, *, temporal_factor: int = TEMPORAL_FACTOR
) -> list[ClipWindow]:
    """The rolling schedule's windows (``next_rolling``) of a video of ``total_frames``."""
    if int(total_frames) != total_frames or total_frames < 1:
        raise ReadtalkError(f"a video needs at least one frame, got {total_frames}")
    plan: list[ClipWindow] = []
    covered = 0
    while covered < total_frames:
        w = next_rolling(
            len(plan), covered, context, total_frames - covered, temporal_factor=temporal_factor
        )
        plan.append(w)
        covered = w.out_stop
    return plan


def stitch_frames(clips: Sequence[Tensor], plan: Sequence[ClipWindow], dim: int = 2) -> Tensor:
    """Concatenate the kept frames of decoded clips (``clips[k]`` has ``plan[k].frames`` frames
    on axis ``dim``, e.g. ``(B, 3, F_k, H, W)``) into the output video of ``plan[-1].out_stop``
    frames."""
    if len(clips) != len(plan):
        raise ValueError(f"{len(clips)} clips for a plan of {len(plan)}")
    parts = []
    for clip, w in zip(clips, plan, strict=True):
        if clip.shape[dim] != w.frames:
            raise ValueError(f"clip {w.index} has {clip.shape[dim]} frames, expected {w.frames}")
        parts.append(clip.narrow(dim, w.keep_start, w.keep_stop - w.keep_start))
    return torch.cat(parts, dim=dim)


def iter_clips(
    model_fn: VelocityModel,
    plan: Sequence[ClipWindow],
    conds: Sequence[Mapping[str, Any] | None] | Callable[[ClipWindow], Mapping[str, Any] | None],
    schedule: Tensor,
    shape: tuple[int, int, int, int],
    *,
    generator: torch.Generator | None = None,
    motion_mode: MotionMode = "async",
    guidance: Guidance = DEFAULT_GUIDANCE,
    ref_frames: int = 1,
    motion_fn: Callable[[Tensor, ClipWindow], Tensor] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Iterator[Tensor]:
    """Sample the clips of a plan in order with ``ans_sample``; yields each clip's latents
    ``(B, C, plan[k].latents, h, w)`` as soon as it is done (streaming).

    ``shape`` is ``(B, C, h, w)``; ``conds[k]`` (or ``conds(window)``) is clip ``k``'s model
    condition (its reference latent and speech codes). Each clip's noise is one
    ``torch.randn`` from ``generator``, so the video is deterministic for a seed. The motion
    of clip ``k`` is ``motion_fn(previous latents, window)``, by default the previous clip's
    last ``m`` latents (a pipeline may instead re-encode the previous clip's last ``8m - 7``
    decoded frames: same timeline, a first latent of the kind training saw). ``callback`` is
    passed to ``ans_sample`` (called after every step, e.g. for a progress bar).
    """
    prev: Tensor | None = None
    for window in plan:
        cond = conds(window) if callable(conds) else conds[window.index]
        motion = None
        m = window.motion_latents
        if m > 0 and prev is not None:
            motion = motion_fn(prev, window) if motion_fn else prev[:, :, prev.shape[2] - m :]
        prev = sample_clip(
            model_fn, window, cond, schedule, shape, motion,
            generator=generator, motion_mode=motion_mode, guidance=guidance,
            ref_frames=ref_frames, device=device, dtype=dtype, callback=callback,
        )  # fmt: skip
        yield prev


def sample_clip(
    model_fn: VelocityModel,
    window: ClipWindow,
    cond: Mapping[str, Any] | None,
    schedule: Tensor,
    shape: tuple[int, int, int, int],
    motion: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    motion_mode: MotionMode = "async",
    guidance: Guidance = DEFAULT_GUIDANCE,
    ref_frames: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, Tensor], None] | None = None,
    motion_floor: float = 0.0,
) -> Tensor:
    """One clip of a plan: its noise, one ``torch.randn`` of ``(B, C, latents, h, w)`` from
    ``generator`` (so consecutive clips drawn from one generator make a video that is a pure
    function of the seed), sampled with ``ans_sample`` after ``motion`` (None for a first clip
    or plain chunking). Returns the clip's latents ``(B, C, window.latents, h, w)``."""
    b, c, h, w = shape
    if device is None and generator is not None:
        device = generator.device
    noise = torch.randn(b, c, window.latents, h, w, generator=generator, device=device, dtype=dtype)
    return ans_sample(
        model_fn, noise, schedule, motion=motion, motion_mode=motion_mode, cond=cond,
        guidance=guidance, ref_frames=ref_frames, callback=callback, motion_floor=motion_floor,
    )  # fmt: skip
