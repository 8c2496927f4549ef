"""Inference: one portrait + speech -> a lip-synced 25-fps video with the speech muxed in.

This is the one place where the three trained parts meet: the temporal VAE (pixels <->
latents), the SpeechAE (front-end features -> one speech code per latent frame) and the
A2V-DiT (velocity of noisy latents), sampled with READ's asynchronous noise scheduler (ANS).

Usage::

    pipe = Pipeline.from_pretrained()                            # the shipped demo model
    pipe = Pipeline.from_pretrained("models/readtalk")          # vae/speechae/dit.safetensors
    pipe = Pipeline.from_pretrained("models/onnx", runtime="onnx")  # readtalk export --format onnx
    pipe.generate_to_file("face.png", "speech.wav", "out.mp4")  # bounded memory
    res = pipe(image_array, audio_array, seed=1)                 # in memory: res.frames
    s = pipe.stream("face.png", seed=0)                          # live: s.push(piece), s.flush()

Offline generation is the streaming session (``readtalk.session``) fed the whole speech: one
algorithm, the same frames (the session's docstring has the clip plan, the motion latents and
the decoding). Settings are one ``GenerationSettings`` record (``readtalk.settings``): the
code's defaults, then the model's (the DiT release's ``diffusion`` entries, then the model
folder's ``pipeline.json``), then the caller's keyword overrides.

**Frame rule.** Audio of ``N`` samples at 16 kHz gives ``F = ceil(N / 640)`` frames at 25 fps
(one per started 40 ms). Audio shorter than one frame (``N < 640``) is an error. The original
(unpadded) audio is muxed.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from readtalk.data import faces
from readtalk.device import resolve_device, resolve_dtype
from readtalk.dit.release import DiTRelease, load_dit_release
from readtalk.errors import PortraitWarning, ReadtalkError
from readtalk.media import (
    FPS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    VideoWriter,
    as_audio,
    fit_size,
    frames_for_samples,
    load_audio,
    read_image,
    to_tensor,
    write_video,
)
from readtalk.onnx_runtime import RUNTIMES, use_onnx
from readtalk.release import default_model_dir, read_model_folder
from readtalk.session import GenerationModels, Session, plan_windows
from readtalk.settings import DEFAULT_SIZE, GenerationSettings
from readtalk.speech.frontend import FEATURE_RATE, load_front_end
from readtalk.speech.rolling import SpeechWindow
from readtalk.speech.speechae import load_speechae
from readtalk.vae.factorised import load_vae

__all__ = [
    "GenerationResult", "Pipeline", "PortraitFit", "PortraitWarning", "face_crop", "saturation",
]  # fmt: skip

CROPS = ("center", "face")
# What a model knows of portraits, when its folder records nothing (pipeline.json "portrait",
# written by ``readtalk export --portraits``): a VAE reconstruction under 20 dB is a face it
# cannot draw; colourfulness is not checked.
DEFAULT_PORTRAIT = {"psnr_min": 20.0, "saturation": [0.0, 1.0]}
PSNR_MARGIN = 1.5  # dB under the worst training portrait
SATURATION_MARGIN = 0.05  # around the training portraits' range


@dataclass(frozen=True)
class PortraitFit:
    """How a framed portrait compares with the faces a model was trained on: ``psnr`` (dB) of
    the model VAE's own reconstruction of it (low: a face the model cannot draw) and its
    colourfulness ``saturation`` (mean HSV saturation in [0, 1]), against the ranges its
    model folder records (``Pipeline.portrait_statistics``)."""

    psnr: float
    saturation: float
    psnr_min: float
    saturation_range: tuple[float, float]

    @property
    def ok(self) -> bool:
        lo, hi = self.saturation_range
        return self.psnr >= self.psnr_min and lo <= self.saturation <= hi

    @property
    def threshold(self) -> float:
        return self.psnr_min

    def message(self) -> str:
        why = []
        if self.psnr < self.psnr_min:
            why.append(f"the model's VAE redraws it at {self.psnr:.1f} dB, its training faces "
                       f"at >= {self.psnr_min:.1f} dB")  # fmt: skip
        lo, hi = self.saturation_range
        if not lo <= self.saturation <= hi:
            why.append(f"its colourfulness {self.saturation:.2f} lies outside the training "
                       f"faces' {lo:.2f}..{hi:.2f}")  # fmt: skip
        return (
            f"this portrait is unlike the faces the model was trained on ({'; '.join(why)}): "
            "expect a blurred or wrong face. Fine-tune the model on videos of this person "
            "(readtalk finetune, docs/finetune.md) or use a portrait like its training faces."
        )


def saturation(image: np.ndarray) -> float:
    """Mean HSV saturation of a uint8 RGB image, in [0, 1] (0: grey)."""
    return float(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1].mean() / 255.0)


@dataclass
class GenerationResult:
    """What one generation produced.

    ``frames``: uint8 (F, H, W, 3) when generated in memory (``Pipeline.__call__``), None when
    written to ``path`` (``generate_to_file``). ``audio``: the original 16 kHz mono input.
    """

    num_frames: int
    fps: int
    size: int
    audio: np.ndarray
    clips: int
    seconds: float  # wall time of the generation
    frames: np.ndarray | None = None
    path: Path | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    # wall seconds and calls per stage (speech, dit, decode, frames, encode, mp4)
    times: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Video duration in seconds (``num_frames / fps``)."""
        return self.num_frames / self.fps

    @property
    def audio_duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def realtime_factor(self) -> float:
        """Generation time / audio duration (< 1: faster than real time)."""
        return self.seconds / max(self.audio_duration, 1e-9)

    def save(self, path: str | os.PathLike) -> Path:
        """Write an in-memory result (``frames``) with its audio to an mp4."""
        if self.frames is None:
            raise ReadtalkError("this result was written to a file; it holds no frames")
        self.path = write_video(path, self.frames, self.audio)
        return self.path


class Pipeline:
    """Portrait + speech -> talking-head video (module docstring)."""

    def __init__(
        self,
        vae: Any,
        speechae: Any,
        dit: DiTRelease,
        front_end: Any,
        *,
        defaults: dict | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = "float32",
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if self.device.type == "cpu" and self.dtype not in (torch.float32, torch.bfloat16):
            raise ReadtalkError(
                f"{self.dtype} is not supported on the CPU; use float32 or bfloat16"
            )
        _check_parts(vae, speechae, dit, front_end)
        mean, std = dit.latent_mean, dit.latent_std
        self.models = GenerationModels(
            vae=vae.to(self.device, self.dtype).eval(),
            speechae=speechae.to(self.device).eval(),  # small: always float32
            front_end=front_end,
            dit=dit.model.to(self.device, self.dtype).eval(),
            latent_mean=None if mean is None else mean.to(self.device),
            latent_std=None if std is None else std.to(self.device),
            device=self.device,
            dtype=self.dtype,
            speech_window=SpeechWindow.from_meta(dit.diffusion.get("speech_window")),
        )
        self.defaults = {**dit.diffusion, **(defaults or {})}
        self.size = int(self.defaults.get("size", DEFAULT_SIZE))
        s = vae.spatial_factor
        if self.size <= 0 or self.size % s:
            raise ReadtalkError(f"frame size must be a positive multiple of {s}, got {self.size}")
        self.default_settings = GenerationSettings.from_model(self.defaults)
        self.default_settings.clip_latents(vae.temporal_factor)  # the model's own must fit

    @property
    def vae(self) -> Any:
        return self.models.vae

    @property
    def dit(self) -> Any:
        return self.models.dit

    @property
    def speechae(self) -> Any:
        return self.models.speechae

    @property
    def front_end(self) -> Any:
        return self.models.front_end

    # ---- loading

    @classmethod
    def from_files(
        cls,
        *,
        vae: str | os.PathLike,
        speech: str | os.PathLike,
        dit: str | os.PathLike,
        whisper: str | os.PathLike | None = None,
        defaults: dict | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = "float32",
    ) -> Pipeline:
        """Load the three release files (``whisper``: Whisper weights for a SpeechAE trained on
        Whisper features; default: the packaged tiny.en)."""
        v = load_vae(vae)
        s = load_speechae(speech)
        d = load_dit_release(dit)
        kind = s.cfg.front_end
        if kind not in ("logmel", "whisper", "whisper-tiny"):
            raise ReadtalkError(f"{speech}: unknown speech front end {kind!r}")
        front_end = load_front_end(
            "logmel" if kind == "logmel" else "whisper", whisper, device=resolve_device(device)
        )
        return cls(v, s, d, front_end, defaults=defaults, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        whisper: str | os.PathLike | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = "float32",
        runtime: str = "torch",
    ) -> Pipeline:
        """Load a model folder: ``vae.safetensors``, ``speechae.safetensors``,
        ``dit.safetensors`` and optionally ``pipeline.json`` (defaults). No path: the demo
        model shipped inside the package. ``runtime="onnx"``: a folder written by ``readtalk
        export --format onnx``, its DiT and frame decoder run in onnxruntime (CPU, float32;
        ``readtalk.onnx_runtime``)."""
        if runtime not in RUNTIMES:
            raise ReadtalkError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        root = default_model_dir() if path is None else path
        files, defaults = read_model_folder(root)
        pipe = cls.from_files(
            vae=files["vae"], speech=files["speechae"], dit=files["dit"], whisper=whisper,
            defaults=defaults, device=device, dtype=dtype,
        )  # fmt: skip
        if runtime == "onnx":
            use_onnx(pipe.models, root)
        return pipe

    # ---- latent space

    def _normalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.models.normalize(z)

    def _denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.models.denormalize(z)

    # ---- inputs

    def prepare_image(
        self, image: str | os.PathLike | np.ndarray, crop: str = "center"
    ) -> np.ndarray:
        """Portrait (path or uint8 HWC RGB) -> uint8 (size, size, 3).

        ``crop="center"``: the centre square, resized. ``crop="face"``: the largest face found by
        the detector ``readtalk prepare`` uses, framed as prepared training clips are (a square
        2x the face box, centred 0.15 face sizes above it), so a photo of any framing matches
        what the model was trained on."""
        if isinstance(image, str | os.PathLike):
            image = read_image(image)
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 1:
            raise ReadtalkError(f"image must be an (H, W, 3) RGB array, got shape {img.shape}")
        if img.dtype != np.uint8:
            raise ReadtalkError(f"image array must be uint8 RGB, got {img.dtype}")
        img = np.ascontiguousarray(img[..., :3])
        if crop not in CROPS:
            raise ReadtalkError(f"crop must be 'center' or 'face', got {crop!r}")
        if crop == "face":
            return face_crop(img, self.size)
        return fit_size(img[None], self.size)[0]

    @staticmethod
    def prepare_audio(audio: str | os.PathLike | np.ndarray | torch.Tensor) -> np.ndarray:
        """Speech (path or 16 kHz mono float array) -> float32 (N,), N >= 640."""
        if isinstance(audio, str | os.PathLike):
            audio = load_audio(audio)
        x = as_audio(audio)
        frames_for_samples(len(x))
        return x

    # ---- settings

    def settings(
        self, settings: GenerationSettings | None = None, **overrides: Any
    ) -> GenerationSettings:
        """The settings a generation runs with: ``settings`` (default: the model's) with
        ``overrides`` (``GenerationSettings`` field names; None keeps) on top."""
        st = (settings or self.default_settings).override(**overrides)
        st.clip_latents(self.vae.temporal_factor)
        return st

    # ---- generation

    def stream(
        self,
        image: str | os.PathLike | np.ndarray,
        settings: GenerationSettings | None = None,
        *,
        crop: str = "center",
        on_step: Callable[[Any], None] | None = None,
        check_portrait: bool = True,
        **overrides: Any,
    ) -> Session:
        """A live session for one portrait: ``push`` speech as it arrives, get final frames
        back, ``flush`` at the end (``readtalk.session``). Settings as ``__call__``;
        ``on_step(window)`` is called after every Euler step. A portrait unlike the model's
        training faces gives a ``PortraitWarning`` (``check_portrait=False``: not checked)."""
        st = self.settings(settings, **overrides)
        portrait = self.prepare_image(image, crop)
        if check_portrait:
            self.check_portrait(portrait)
        return Session(self.models, portrait, st, on_step=on_step)

    def portrait_fit(self, portrait: np.ndarray) -> PortraitFit:
        """How a framed portrait (uint8 (size, size, 3)) compares with the model's training
        faces (``PortraitFit``): cheap, one frame encoded and decoded."""
        img = np.ascontiguousarray(portrait)
        x = to_tensor(img[None])[None].to(self.device, self.dtype)
        with torch.no_grad():
            y = self.vae.decode(self.vae.encode(x)).float().clamp(-1, 1)
        mse = float(((y - x.float()) ** 2).mean()) / 4.0  # in [0, 1] units
        psnr = 10 * float(np.log10(1.0 / max(mse, 1e-10)))
        known = {**DEFAULT_PORTRAIT, **self.defaults.get("portrait", {})}
        lo, hi = known["saturation"]
        return PortraitFit(psnr, saturation(img), float(known["psnr_min"]), (float(lo), float(hi)))

    def portrait_statistics(self, portraits: Iterable[np.ndarray]) -> dict[str, Any]:
        """The ranges ``portrait_fit`` checks, from the model's training portraits (framed,
        uint8): what ``readtalk export --portraits`` records in pipeline.json ("portrait")."""
        fits = [self.portrait_fit(self.prepare_image(p)) for p in portraits]
        if not fits:
            raise ReadtalkError("no training portraits to take statistics from")
        sat = [f.saturation for f in fits]
        return {
            "psnr_min": round(min(f.psnr for f in fits) - PSNR_MARGIN, 2),
            "saturation": [round(max(0.0, min(sat) - SATURATION_MARGIN), 3),
                           round(min(1.0, max(sat) + SATURATION_MARGIN), 3)],
            "portraits": len(fits),
        }  # fmt: skip

    def check_portrait(self, portrait: np.ndarray) -> PortraitFit:
        """``portrait_fit``, with a ``PortraitWarning`` when the model will not draw it well."""
        fit = self.portrait_fit(portrait)
        if not fit.ok:
            warnings.warn(fit.message(), PortraitWarning, stacklevel=3)
        return fit

    def iter_frames(
        self,
        image: str | os.PathLike | np.ndarray,
        audio: np.ndarray,
        settings: GenerationSettings,
        *,
        progress: bool = True,
    ) -> Iterator[np.ndarray]:
        """The session over the whole (prepared) ``audio``, fed one clip's worth of new speech
        at a time so that memory stays bounded: yields uint8 (H, W, 3) frames in order."""
        yield from _feed(*self._offline_session(image, len(audio), settings, progress), audio)

    def _offline_session(
        self,
        image: Any,
        samples: int,
        st: GenerationSettings,
        progress: bool,
        on_progress: Callable[[float], None] | None = None,
    ) -> tuple[Session, tqdm]:
        """A session for a whole recording of ``samples``, with a progress bar over its
        clips' steps; ``on_progress(fraction done)`` after every step."""
        tf = self.vae.temporal_factor
        clips = len(plan_windows(st, frames_for_samples(samples), tf))
        total = clips * st.steps
        bar = tqdm(total=total, desc="generate", unit="step", disable=not progress)

        def on_step(window) -> None:
            bar.set_postfix(clip=f"{window.index + 1}/{clips}", refresh=False)
            bar.update(1)
            if on_progress is not None:
                on_progress(bar.n / total)

        watched = progress or on_progress is not None
        return self.stream(image, st, on_step=on_step if watched else None), bar

    def __call__(
        self,
        image: str | os.PathLike | np.ndarray,
        audio: str | os.PathLike | np.ndarray,
        settings: GenerationSettings | None = None,
        *,
        progress: bool = True,
        **overrides: Any,
    ) -> GenerationResult:
        """Generate in memory; ``result.frames`` is uint8 (F, H, W, 3), F = ceil(N / 640).

        ``settings``: a ``GenerationSettings`` (default: the model's); keyword ``overrides``
        set single fields of it (``steps=4``, ``seed=1``, ``guidance="joint"``, ``ans=False``).
        """
        t0 = time.perf_counter()
        st = self.settings(settings, **overrides)
        x = self.prepare_audio(audio)
        session, bar = self._offline_session(image, len(x), st, progress)
        frames = np.stack(list(_feed(session, bar, x)))
        return GenerationResult(
            num_frames=len(frames), fps=FPS, size=self.size, audio=x, clips=session.clips,
            seconds=time.perf_counter() - t0, frames=frames, settings=st,
            times=session.times.as_dict(),
        )  # fmt: skip

    def generate_to_file(
        self,
        image: str | os.PathLike | np.ndarray,
        audio: str | os.PathLike | np.ndarray,
        out: str | os.PathLike,
        settings: GenerationSettings | None = None,
        *,
        progress: bool = True,
        on_progress: Callable[[float], None] | None = None,
        **overrides: Any,
    ) -> GenerationResult:
        """Generate straight into an mp4 (H.264 + AAC of the original audio), frames written
        as they are decoded; the file appears only once complete (an exception, e.g. raised by
        ``on_progress(fraction done)`` to cancel, leaves no file). Settings as ``__call__``."""
        t0 = time.perf_counter()
        st = self.settings(settings, **overrides)
        x = self.prepare_audio(audio)
        image = self.prepare_image(image)  # fail on a bad image before any work
        session, bar = self._offline_session(image, len(x), st, progress, on_progress)
        times = session.times
        with VideoWriter(out, self.size, self.size, fps=FPS) as vw:
            with times.stage("mp4"):
                vw.add_audio(x)
            for frame in _feed(session, bar, x):
                with times.stage("mp4"):
                    vw.write(frame)
            n = vw.frames_written
            t_close = time.perf_counter()
        times.add("mp4", time.perf_counter() - t_close, 0)  # flushing x264 and the muxer
        assert n == frames_for_samples(len(x))
        return GenerationResult(
            num_frames=n, fps=FPS, size=self.size, audio=x, clips=session.clips,
            seconds=time.perf_counter() - t0, path=Path(out), settings=st,
            times=times.as_dict(),
        )  # fmt: skip


def _feed(session: Session, bar: tqdm, audio: np.ndarray) -> Iterator[np.ndarray]:
    """A whole recording through ``session``, one clip's worth of new speech at a time (so
    memory stays bounded); closes the progress bar at the end."""
    piece = max(session.settings.clip_frames - 1, 64) * SAMPLES_PER_FRAME
    try:
        for start in range(0, len(audio), piece):
            yield from session.push(audio[start : start + piece])
        yield from session.flush()
    finally:
        bar.close()


def _check_parts(vae: Any, speechae: Any, dit: DiTRelease, front_end: Any) -> None:
    """One-line errors when the three parts were not trained together."""
    dc = dit.model.cfg
    if vae.latent_channels != dc.latent_channels:
        raise ReadtalkError(
            f"wrong checkpoint: the DiT works on {dc.latent_channels} latent channels but the "
            f"VAE ({vae.config.name}) has {vae.latent_channels}"
        )
    if speechae.cfg.code_dim != dc.audio_dim:
        raise ReadtalkError(
            f"wrong checkpoint: the DiT takes {dc.audio_dim}-d speech codes but the SpeechAE "
            f"makes {speechae.cfg.code_dim}-d ones"
        )
    per_frame = FEATURE_RATE // FPS  # feature frames (50/s) per video frame
    if speechae.cfg.feat_dim != per_frame * front_end.dim:
        raise ReadtalkError(
            f"wrong checkpoint: the SpeechAE takes {speechae.cfg.feat_dim}-d features but the "
            f"{front_end.name} front end gives {per_frame} x {front_end.dim}"
        )


def face_crop(image: np.ndarray, size: int, margin: float = 2.0, lift: float = 0.15) -> np.ndarray:
    """The largest face of an RGB image, framed like ``readtalk prepare``'s clips."""
    found = faces.FaceDetector()(image)
    if not found:
        raise ReadtalkError("no face found in the portrait (use --crop center to skip detection)")
    face = max(found, key=lambda f: f.size)
    h, w = image.shape[:2]
    box = faces.crop_boxes(face.box[None], margin, lift, w, h)[0]
    return faces.crop_frame(image, box, size)
