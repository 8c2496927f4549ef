"""A generation session: one portrait and its settings fixed, speech in as it arrives, frames
out as soon as they are final. Offline generation (``Pipeline.__call__``) is this session run
over the whole speech, so streaming and offline are one algorithm and give the same frames.

    s = Session(models, portrait, settings)
    for piece in speech_pieces:          # float32 16 kHz mono, any length
        for frame in s.push(piece):      # uint8 (H, W, 3), in order
            show(frame)
    for frame in s.flush():              # end of speech: the rest (the last clip padded)
        show(frame)

**Clips.** The speech is cut into clips of ``clip_frames`` frames (``diffusion.next_clip``;
READ's ANS): each later clip starts with ``m`` clean motion latents, the previous clip's last
``8(m - 1) + 1`` decoded frames encoded again (``motion_from="frames"``), so the DiT continues
from what was shown. A clip is generated as soon as its whole audio window has arrived: its
speech codes come from that window's own audio (``speech.window_codes``: Whisper's features
depend on the position within its 30-s window, and the cache computed them per window in
training), so they are the same whether the audio came in one piece or in samples. ``flush``
pads the last clip's audio with silence and drops its surplus frames: exactly one frame per
started 40 ms of speech (``media.frames_for_samples``).

**Rolling schedule** (``settings.schedule = "rolling"``, ``diffusion.next_rolling``): each
DiT window makes one new 8-frame latent after the ``context_latents`` before it, as soon as
its audio and the speech window's lookahead have arrived; the speech codes are per latent
(``speech.rolling``), each computed once. The clip rules below hold with "clip" read as
"window".

**Pauses.** With ``settings.gate_db`` > 0 the speech the model hears is gated
(``speech.gate.NoiseGate``, per whole 40-ms frame and causally, so still the same however
the speech is split): a recording's pauses become the silence the training speech has.

**Decoding.** A later clip's new latents are decoded after the last ``decode_context``
latents before them, so the causal VAE decoder continues one latent sequence instead of
starting afresh at every clip. A VAE with a portrait refiner (``vae.refiner``) decodes every
frame with the portrait's detail (``FactorisedVAE.reference``, prepared once per session).

Determinism: the noise of every clip is drawn in order from one ``torch.Generator`` seeded
with ``settings.seed`` on the sampling device. Thread safety: ``push`` and ``flush`` hold a
lock; from asyncio, ``await s.apush(x)`` / ``await s.aflush()`` run them in a worker thread
(the same as ``await loop.run_in_executor(None, s.push, x)``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from readtalk.diffusion.ans import (
    ClipWindow,
    next_clip,
    next_rolling,
    overlap_frames,
    plan_clips,
    plan_rolling,
    sample_clip,
)
from readtalk.diffusion.flow import timestep_schedule
from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLES_PER_FRAME, as_audio, frames_for_samples, to_tensor, to_uint8
from readtalk.profiling import StageTimes
from readtalk.settings import GenerationSettings
from readtalk.speech.gate import GateConfig, NoiseGate
from readtalk.speech.rolling import SpeechWindow, latent_codes
from readtalk.speech.speechae import window_codes

__all__ = ["GenerationModels", "Session", "plan_windows"]


def plan_windows(
    settings: GenerationSettings, total_frames: int, temporal_factor: int = 8
) -> list[ClipWindow]:
    """The DiT windows ``settings`` make for a video of ``total_frames`` (a session makes them
    one by one as the speech arrives)."""
    st, tf = settings, temporal_factor
    if st.schedule == "rolling":
        return plan_rolling(total_frames, st.context_latents, temporal_factor=tf)
    return plan_clips(total_frames, st.clip_latents(tf), st.motion_latents, temporal_factor=tf)


@dataclass
class GenerationModels:
    """The trained parts a session samples with, on their device: the VAE (pixels <->
    latents), the SpeechAE and its front end (speech -> one code per latent frame), the DiT
    (velocity of noisy latents) and the latent normalisation the DiT was trained on
    (``latent_mean`` / ``latent_std`` per channel; None: the VAE's own)."""

    vae: torch.nn.Module
    speechae: torch.nn.Module
    front_end: object
    dit: torch.nn.Module
    latent_mean: Tensor | None
    latent_std: Tensor | None
    device: torch.device
    dtype: torch.dtype
    # the DiT's speech codes: one per latent from a short window (speech.rolling), or None: one
    # code sequence per window's own audio (speechae.window_codes)
    speech_window: SpeechWindow | None = None

    def normalize(self, z: Tensor) -> Tensor:
        if self.latent_mean is None:
            return self.vae.normalize(z)
        return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    def denormalize(self, z: Tensor) -> Tensor:
        if self.latent_mean is None:
            return self.vae.denormalize(z)
        return z * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)

    def encode(self, frames: Tensor) -> Tensor:
        """(1, 3, F, H, W) pixels in [-1, 1] -> normalised float32 latents (1, C, f, h, w)."""
        return self.normalize(self.vae.encode(frames.to(self.device, self.dtype)).float())

    def velocity(self, z: Tensor, t: Tensor, rm: Tensor, am: Tensor, cond: dict) -> Tensor:
        dt = self.dtype
        return self.dit(z.to(dt), t, cond["ref"].to(dt), cond["audio"].to(dt), rm, am)


class Session:
    """Speech in (``push``), final frames out, for one portrait (module docstring).

    ``portrait``: uint8 (size, size, 3), already framed (``Pipeline.prepare_image``).
    ``on_step``: called after every Euler step (e.g. a progress bar).
    """

    def __init__(
        self,
        models: GenerationModels,
        portrait: np.ndarray,
        settings: GenerationSettings,
        *,
        on_step: Callable[[ClipWindow], None] | None = None,
    ) -> None:
        self.models = models
        self.settings = settings
        self._tf = models.vae.temporal_factor
        self._rolling = settings.schedule == "rolling"
        self._sw = models.speech_window
        if self._rolling and self._sw is None:
            raise ReadtalkError(
                "the rolling schedule needs a DiT trained for it (per-latent speech codes); "
                "this model has clip-window codes: use schedule='clips'"
            )
        self._clip_latents = settings.clip_latents(self._tf)
        self._codes_of: dict[int, Tensor] = {}  # rolling: speech code of each recent latent
        self._on_step = on_step
        self._schedule = timestep_schedule(settings.steps, settings.shift)
        self._guidance = settings.guidance_config()
        self._lock = threading.Lock()
        # wall time per stage (speech, dit, decode, frames, encode) for benchmarks and servers
        self.times = StageTimes()
        dev = models.device
        with torch.no_grad():
            image = to_tensor(portrait[None])[None]  # (1, 3, 1, H, W)
            self._ref = models.encode(image)  # (1, C, 1, h, w)
            # a VAE with a portrait refiner decodes every frame with the portrait's detail
            self._refine = models.vae.reference(image[:, :, 0].to(dev, models.dtype))
        _, c, _, h, w = self._ref.shape
        self._shape = (1, c, h, w)
        self._gen = torch.Generator(device=dev).manual_seed(settings.seed)
        # audio: samples [self._offset, self._offset + len(buffer)) of the speech, with the
        # pieces pushed since it was last joined in ``_pending`` (so 1-sample pushes stay cheap)
        self._buffer = np.zeros(0, np.float32)
        self._pending: list[np.ndarray] = []
        self._offset = 0
        # what the model hears: the speech with its pauses silenced (whole frames, causally)
        self._gate = NoiseGate(GateConfig(range_db=settings.gate_db))
        self.samples_in = 0  # samples pushed so far
        self.frames_out = 0  # frames returned so far
        self.clips = 0  # clips generated so far
        self.closed = False
        # what a clip carries to the next: the last ``ov`` decoded frames (the next motion),
        # the last ``keep`` latents and the VAE's decoding state (the decoder's context)
        motion = settings.context_latents if self._rolling else settings.motion_latents
        self._ov = overlap_frames(motion, self._tf)
        self._tail: Tensor | None = None
        self._prev: Tensor | None = None  # the previous clip's latents
        self._keep = min(settings.decode_context, models.vae.config.decoder_context)
        self._carry = self._keep > 0 and models.vae.config.decoder_causal
        self._history: Tensor | None = None
        self._decode_state: dict = {}

    # ---- public

    def push(self, audio: np.ndarray | Tensor) -> list[np.ndarray]:
        """Add speech (float32 16 kHz mono, any length); return the frames that became final,
        uint8 (H, W, 3) each, in order."""
        x = as_audio(audio, "pushed audio")
        with self._lock:
            if self.closed:
                raise ReadtalkError(
                    "this session was flushed or closed; start a new one with stream()"
                )
            self._pending.append(self._gate.process(x))
            self.samples_in += len(x)
            out: list[np.ndarray] = []
            ahead = self._sw.lookahead if self._sw is not None else 0
            while True:
                window = self._next_window(None)
                if (window.frame_stop + ahead) * SAMPLES_PER_FRAME > self.samples_in:
                    return out
                out.extend(self._run(window))

    def flush(self) -> list[np.ndarray]:
        """End of speech: generate the rest (the last clip's audio padded with silence) and
        return its frames. The session is closed afterwards."""
        with self._lock:
            if self.closed:
                raise ReadtalkError("this session was already flushed")
            self.closed = True
            self._pending.append(self._gate.flush())
            total = frames_for_samples(self.samples_in)
            out: list[np.ndarray] = []
            while self.frames_out < total:  # ``_run`` counts the frames it returns
                out.extend(self._run(self._next_window(total - self.frames_out)))
            self._release()
            return out

    def close(self) -> None:
        """Drop the session without generating the rest (a client went away): frees its
        audio, latents and decoder state at once. Idempotent; ``push`` afterwards is an
        error."""
        with self._lock:
            self.closed = True
            self._release()

    async def apush(self, audio: np.ndarray | Tensor) -> list[np.ndarray]:
        """``push`` for asyncio: runs in a worker thread, so the event loop stays free."""
        return await asyncio.to_thread(self.push, audio)

    async def aflush(self) -> list[np.ndarray]:
        """``flush`` for asyncio (a worker thread)."""
        return await asyncio.to_thread(self.flush)

    # ---- clips

    def _next_window(self, rest: int | None) -> ClipWindow:
        if self._rolling:
            return next_rolling(
                self.clips, self.frames_out, self.settings.context_latents, rest,
                temporal_factor=self._tf,
            )  # fmt: skip
        return next_clip(
            self.clips, self.frames_out, self._clip_latents, self.settings.motion_latents,
            rest, temporal_factor=self._tf,
        )  # fmt: skip

    def _run(self, window: ClipWindow) -> list[np.ndarray]:
        with torch.no_grad():
            frames = [f for run in self._clip(window) for f in run]
        self.clips += 1
        self.frames_out += len(frames)
        # the next clip starts with this one's overlap (and a per-latent code hears up to
        # ``context`` frames before its latent): older audio is not needed again
        keep = self._ov + (self._sw.context if self._sw is not None else 0)
        drop = (self.frames_out - keep) * SAMPLES_PER_FRAME - self._offset
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._offset += drop
        return frames

    def _codes(self, window: ClipWindow) -> Tensor:
        """(1, f, A) speech codes over the window's own audio (silence past the end)."""
        if self._pending:
            self._buffer = np.concatenate([self._buffer, *self._pending])
            self._pending = []
        md = self.models
        if self._sw is not None:
            with self.times.stage("speech"):
                return self._latent_codes(window)
        start = window.frame_start * SAMPLES_PER_FRAME - self._offset
        assert start >= 0, "audio of a clip window was dropped too early"
        audio = self._buffer[start : start + window.frames * SAMPLES_PER_FRAME]
        with self.times.stage("speech"):
            return window_codes(md.speechae, md.front_end, audio, 0, window.frames)

    def _latent_codes(self, window: ClipWindow) -> Tensor:
        """(1, f, A) per-latent codes (``speech.rolling``): by global latent in the rolling
        schedule (each computed once), by window latent in the clip schedule (the cache's
        rule for a window starting at ``frame_start``)."""
        md, sw = self.models, self._sw
        assert sw is not None
        if not self._rolling:
            return latent_codes(
                md.speechae, md.front_end, self._buffer, range(window.latents), sw,
                audio_start=self._offset, frame_origin=window.frame_start,
            )  # fmt: skip
        first = 0 if window.index == 0 else window.index + 1 - window.motion_latents
        wanted = range(first, first + window.latents)
        new = [g for g in wanted if g not in self._codes_of]
        if new:
            codes = latent_codes(
                md.speechae, md.front_end, self._buffer, new, sw, audio_start=self._offset
            )  # fmt: skip
            self._codes_of.update({g: codes[:, i] for i, g in enumerate(new)})
        for g in [g for g in self._codes_of if g < first]:
            del self._codes_of[g]
        return torch.stack([self._codes_of[g] for g in wanted], dim=1)

    def _motion(self, window: ClipWindow) -> Tensor | None:
        m = window.motion_latents
        if m == 0 or self._prev is None:
            return None
        if self.settings.motion_from == "frames":
            with self.times.stage("encode"):
                return self.models.encode(self._tail)
        return self._prev[:, :, self._prev.shape[2] - m :]

    def _clip(self, window: ClipWindow) -> Iterator[np.ndarray]:
        """Sample and decode one clip; yield its kept frames as uint8 (n, H, W, 3) runs."""
        md = self.models
        cond = {"ref": self._ref, "audio": self._codes(window).to(md.device)}
        step = None if self._on_step is None else (lambda i, _z: self._on_step(window))
        motion = self._motion(window)
        with self.times.stage("dit"):
            z = sample_clip(
                md.velocity, window, cond, self._schedule, self._shape, motion,
                generator=self._gen, motion_mode="async" if self.settings.ans else "plain",
                guidance=self._guidance, device=md.device, dtype=torch.float32, callback=step,
                motion_floor=self.settings.motion_floor,
            )  # fmt: skip
        self._prev = z
        yield from self._decode(window, md.denormalize(z.float()).to(md.dtype))

    def _decode(self, window: ClipWindow, latent: Tensor) -> Iterator[np.ndarray]:
        m, tf = window.motion_latents, self._tf
        prefix = self._history if self._carry and self._history is not None and m > 0 else None
        if prefix is not None:  # decode only the new latents, after the earlier ones
            latent = latent[:, :, m:]
            done = overlap_frames(m, tf)  # they start after the overlap frames
        else:
            done = 0  # clip-local index of the next decoded frame
        if self._carry:
            seq = latent if prefix is None else torch.cat([prefix, latent], dim=2)
            self._history = seq[:, :, -self._keep :]
        state = self._decode_state if self._carry else None
        ov = self._ov
        vae, blend = self.models.vae, self.settings.group_blend
        runs = vae.iter_decode(
            latent, prefix=prefix, state=state, blend=blend, reference=self._refine
        )
        while True:
            with self.times.stage("decode"):
                run = next(runs, None)
            if run is None:
                return
            a, b = done, done + run.shape[2]
            done = b
            if ov:  # the last ``ov`` decoded frames, across runs
                tail = run if self._tail is None else torch.cat([self._tail, run], dim=2)
                self._tail = tail[:, :, -ov:]
            lo, hi = max(a, window.keep_start), min(b, window.keep_stop)
            if lo < hi:
                with self.times.stage("frames"):
                    out = to_uint8(run[0, :, lo - a : hi - a])
                yield out

    def _release(self) -> None:
        """Drop everything a finished session holds (tensors, decoder state, audio)."""
        self._buffer = np.zeros(0, np.float32)
        self._pending = []
        self._tail = self._history = self._prev = None
        self._decode_state = {}
        self._codes_of = {}
        self._refine = None
