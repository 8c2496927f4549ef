"""Inference: one portrait + speech -> a lip-synced 25-fps mp4 with the speech muxed in.

This is the one place where the three trained parts meet: the temporal VAE (pixels <->
latents), the SpeechAE (front-end features -> one speech code per latent frame) and the
A2V-DiT (velocity of noisy latents), sampled with READ's asynchronous noise scheduler (ANS).

Usage::

    pipe = Pipeline.from_pretrained("models/readtalk")          # vae/speechae/dit.safetensors
    pipe.generate_to_file("face.png", "speech.wav", "out.mp4")  # streaming, bounded memory
    res = pipe(image_array, audio_array, seed=1)                 # in memory: res.frames

**Frame rule.** Audio of ``N`` samples at 16 kHz gives ``F = ceil(N / 640)`` frames at 25 fps
(one per started 40 ms), so the video covers all of the speech and is at most 40 ms longer.
Audio shorter than one frame (``N < 640``) is an error. The original (unpadded) audio is muxed.

**Long audio** (``readtalk.diffusion.plan_clips(F, clip_latents, motion_latents, last="pad")``):
clips of the training length (121 frames = 16 latents by default); each later clip starts with
``m`` clean motion latents (ANS): the previous clip's last ``8(m - 1) + 1`` decoded frames encoded
again (``motion_from="frames"``, the default), because a clip's first latent encodes one frame
while the previous clip's last latent summarises eight; reusing that latent as it is
(``motion_from="latents"``) leaves a visible jump at every clip start. The last clip is a full
clip whose audio is padded with silence and whose surplus frames are dropped. For every clip the
front-end features are computed over *that clip's own audio window*
(``front_end.video_features(audio[window], clip_frames)``), exactly as the SpeechAE / DiT saw
them in training (Whisper's features depend on the position within its 30-s window). Each
clip's latents are de-normalised, decoded piece by piece with the VAE, the overlap frames
dropped, and the frames written straight to the mp4: memory does not grow with the length.

**Latent space.** The DiT works on VAE latents normalised per channel,
``(z - latent_mean) / latent_std`` with the statistics stored in its release file (without
them: the VAE's own ``normalize``).

**DiT release file** (``save_dit_release`` / ``load_dit_release``): safetensors with metadata
``kind = "readtalk.dit"``, ``config`` (``DiTConfig`` JSON), ``latent_mean`` / ``latent_std``
(JSON lists, one value per latent channel) and ``diffusion`` (JSON, e.g. ``{"shift": 1.0,
"steps": 8, "motion_latents": 1, "clip_frames": 121, "size": 256}``), whose entries are the
sampling defaults. A model folder may hold ``pipeline.json`` with the same kind of defaults
(``size``, ``steps``, ``guidance``, ``alpha``, ``beta``, ``gamma``, ``clip_frames``,
``motion_latents``, ``motion_from``, ``shift``), which win over the DiT's.

Determinism: the noise of every clip is drawn from one ``torch.Generator`` seeded with
``seed`` (on the sampling device), so a seed gives the same video on the same device / dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from readtalk.errors import ReadtalkError

if TYPE_CHECKING:  # torch is imported lazily: `readtalk --help` stays instant
    import torch
    from torch import Tensor

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
DIT_KIND = "readtalk.dit"
DEFAULT_SIZE = 256

__all__ = [
    "DEFAULT_KEYS",
    "DIT_KIND",
    "GenerationResult",
    "Pipeline",
    "add_cli",
    "cmd_generate",
    "configure_generate_parser",
    "frames_for_samples",
    "load_dit_release",
    "save_dit_release",
]

_DTYPES = ("float32", "bfloat16", "float16")


# the keys of a model's defaults (pipeline.json, the DiT release) that Pipeline reads: the
# frame size and what Pipeline.settings resolves
DEFAULT_KEYS = (
    "size", "steps", "shift", "guidance", "alpha", "beta", "gamma", "clip_frames",
    "motion_latents", "motion_from", "decode_context",
)  # fmt: skip


# Latents of the previous clip that a clip's decoding continues from (``decode_context``). On the
# demo model (a held-out 60-s video, 8 steps) 8 latents make a clip start change the picture no
# more than any other latent start does (seam ratio 0.98, other latent starts 0.94); 4 leave
# 1.38, 2 leave 4.3 (docs/dit.md). 8 latents decode within 0.8 uint8 levels of the whole video
# decoded at once; the exact reach is the VAE's ``decoder_context`` (17 for res-small).
DECODE_CONTEXT = 8


def frames_for_samples(samples: int) -> int:
    """Video frames for ``samples`` of 16 kHz audio: ``ceil(samples / 640)`` (>= 1 required)."""
    if samples < SAMPLES_PER_FRAME:
        raise ReadtalkError(
            f"audio too short: {samples} samples ({samples / SAMPLE_RATE * 1000:.0f} ms); "
            f"at least one video frame (40 ms = {SAMPLES_PER_FRAME} samples) is needed"
        )
    return -(-int(samples) // SAMPLES_PER_FRAME)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in _DTYPES:
        raise ReadtalkError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return getattr(torch, str(dtype))


def resolve_device(device: str | torch.device | None) -> torch.device:
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ReadtalkError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReadtalkError("--device cuda was asked for but no CUDA GPU is available")
    return dev


# ------------------------------------------------------------------------------ DiT releases


def save_dit_release(
    path: str | os.PathLike,
    dit: torch.nn.Module,
    *,
    latent_mean: Any | None = None,
    latent_std: Any | None = None,
    diffusion: dict | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a DiT release file (module docstring). ``latent_mean`` / ``latent_std`` default to
    0 / 1 per channel (the VAE's latents are used as they are); ``extra`` entries are stored as
    JSON metadata beside them (e.g. which VAE and SpeechAE the DiT was trained with)."""
    import torch

    from readtalk.train.common import save_release

    c = dit.cfg.latent_channels
    mean = [0.0] * c if latent_mean is None else [float(v) for v in torch.as_tensor(latent_mean)]
    std = [1.0] * c if latent_std is None else [float(v) for v in torch.as_tensor(latent_std)]
    if len(mean) != c or len(std) != c:
        raise ReadtalkError(f"latent statistics need {c} values per channel")
    meta = {
        "latent_mean": json.dumps(mean),
        "latent_std": json.dumps(std),
        "diffusion": json.dumps(diffusion or {}),
        **{k: json.dumps(v) for k, v in (extra or {}).items()},
    }
    return save_release(path, dit.state_dict(), DIT_KIND, dit.cfg.to_json(), meta)


@dataclass
class DiTRelease:
    model: Any  # A2VDiT
    latent_mean: Tensor | None  # (C,) or None: use the VAE's normalisation
    latent_std: Tensor | None
    diffusion: dict
    extra: dict  # the other JSON metadata (e.g. "vae", "speechae": {path, sha256})


def load_dit_release(path: str | os.PathLike) -> DiTRelease:
    """Read a DiT release file: the model (eval mode, CPU float32) and its metadata."""
    import torch

    from readtalk.dit import A2VDiT, DiTConfig
    from readtalk.train.common import load_release, release_path

    p = release_path(path, "dit.safetensors")
    tensors, meta = load_release(p, DIT_KIND)
    try:
        cfg = DiTConfig.from_json(meta["config"])
        mean = json.loads(meta["latent_mean"]) if "latent_mean" in meta else None
        std = json.loads(meta["latent_std"]) if "latent_std" in meta else None
        diffusion = json.loads(meta.get("diffusion") or "{}")
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise ReadtalkError(f"{p}: unreadable DiT metadata ({e})") from None
    with torch.device("meta"):
        model = A2VDiT(cfg)
    try:
        model.load_state_dict(tensors, assign=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ReadtalkError(f"{p}: weights do not match its DiT config ({first})") from None
    c = cfg.latent_channels
    for name, v in (("latent_mean", mean), ("latent_std", std)):
        if v is not None and len(v) != c:
            raise ReadtalkError(f"{p}: {name} has {len(v)} values for {c} latent channels")
    if std is not None and min(std) <= 0:
        raise ReadtalkError(f"{p}: latent_std must be positive")
    return DiTRelease(
        model.eval(),
        None if mean is None else torch.tensor(mean, dtype=torch.float32),
        None if std is None else torch.tensor(std, dtype=torch.float32),
        diffusion if isinstance(diffusion, dict) else {},
        _extra_meta(meta),
    )


def _extra_meta(meta: dict[str, str]) -> dict:
    known = {"kind", "config", "latent_mean", "latent_std", "diffusion", "format"}
    out = {}
    for k, v in meta.items():
        if k not in known:
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
    return out


# ---------------------------------------------------------------------------------- results


@dataclass
class GenerationResult:
    """What one generation produced.

    ``frames``: uint8 (F, H, W, 3) when generated in memory (``Pipeline.__call__``), None when
    streamed to ``path`` (``generate_to_file``). ``audio``: the original 16 kHz mono input.
    """

    num_frames: int
    fps: int
    size: int
    audio: np.ndarray
    clips: int
    seconds: float  # wall time of the generation
    frames: np.ndarray | None = None
    path: Path | None = None
    settings: dict = field(default_factory=dict)

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
        from readtalk.media import write_video

        if self.frames is None:
            raise ReadtalkError("this result was streamed to a file; it holds no frames")
        self.path = write_video(path, self.frames, self.audio)
        return self.path


# --------------------------------------------------------------------------------- pipeline


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
        import torch

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if (
            self.dtype != torch.float32
            and self.device.type == "cpu"
            and self.dtype != torch.bfloat16
        ):
            raise ReadtalkError(
                f"{self.dtype} is not supported on the CPU; use float32 or bfloat16"
            )
        self._check(vae, speechae, dit, front_end)
        self.vae = vae.to(self.device, self.dtype).eval()
        self.speechae = speechae.to(self.device).eval()  # small: always float32
        self.dit = dit.model.to(self.device, self.dtype).eval()
        self.front_end = front_end
        self.latent_mean = None if dit.latent_mean is None else dit.latent_mean.to(self.device)
        self.latent_std = None if dit.latent_std is None else dit.latent_std.to(self.device)
        self.defaults = {**dit.diffusion, **(defaults or {})}
        self.size = int(self.defaults.get("size", DEFAULT_SIZE))
        s = vae.spatial_factor
        if self.size <= 0 or self.size % s:
            raise ReadtalkError(f"frame size must be a positive multiple of {s}, got {self.size}")

    # ---- loading

    @staticmethod
    def _check(vae: Any, speechae: Any, dit: DiTRelease, front_end: Any) -> None:
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
        per_frame = 50 // FPS  # feature frames (50/s) per video frame
        if speechae.cfg.feat_dim != per_frame * front_end.dim:
            raise ReadtalkError(
                f"wrong checkpoint: the SpeechAE takes {speechae.cfg.feat_dim}-d features but the "
                f"{front_end.name} front end gives {per_frame} x {front_end.dim}"
            )

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
        from readtalk.speech.frontend import load_front_end
        from readtalk.train.speech import load_speechae
        from readtalk.vae.factorised import load_vae

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
        path: str | os.PathLike,
        *,
        whisper: str | os.PathLike | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = "float32",
    ) -> Pipeline:
        """Load a model folder: ``vae.safetensors``, ``speechae.safetensors``,
        ``dit.safetensors`` and optionally ``pipeline.json`` (defaults)."""
        root = Path(path)
        if not root.is_dir():
            raise ReadtalkError(f"model folder not found: {root}")
        files = model_files(root)
        missing = [p.name for p in files.values() if not p.is_file()]
        if missing:
            raise ReadtalkError(f"model folder {root} lacks {', '.join(missing)}")
        defaults = {}
        pj = root / "pipeline.json"
        if pj.is_file():
            try:
                defaults = json.loads(pj.read_text())
            except json.JSONDecodeError as e:
                raise ReadtalkError(f"{pj}: not valid JSON ({e})") from None
            if not isinstance(defaults, dict):
                raise ReadtalkError(f"{pj}: must hold a JSON object")
        return cls.from_files(
            vae=files["vae"],
            speech=files["speechae"],
            dit=files["dit"],
            whisper=whisper,
            defaults=defaults,
            device=device,
            dtype=dtype,
        )

    # ---- latent space

    def _normalize(self, z: Tensor) -> Tensor:
        if self.latent_mean is None:
            return self.vae.normalize(z)
        return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    def _denormalize(self, z: Tensor) -> Tensor:
        if self.latent_mean is None:
            return self.vae.denormalize(z)
        return z * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)

    # ---- inputs

    def prepare_image(
        self, image: str | os.PathLike | np.ndarray, crop: str = "center"
    ) -> np.ndarray:
        """Portrait (path or uint8 HWC RGB) -> uint8 (size, size, 3).

        ``crop="center"``: the centre square, resized. ``crop="face"``: the largest face found by
        the detector ``readtalk prepare`` uses, framed as prepared training clips are (a square
        2x the face box, centred 0.15 face sizes above it), so a photo of any framing matches
        what the model was trained on."""
        from readtalk.media import read_image
        from readtalk.train.vae import fit_size

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
        if crop == "face":
            return face_crop(img, self.size)
        if crop != "center":
            raise ReadtalkError(f"crop must be 'center' or 'face', got {crop!r}")
        return fit_size(img[None], self.size)[0]

    @staticmethod
    def prepare_audio(audio: str | os.PathLike | np.ndarray | Tensor) -> np.ndarray:
        """Speech (path or 16 kHz mono float array) -> float32 (N,), N >= 640."""
        from readtalk.media import load_audio

        if isinstance(audio, str | os.PathLike):
            audio = load_audio(audio)
        if hasattr(audio, "detach"):  # a torch tensor
            audio = audio.detach().float().cpu().numpy()
        x = np.asarray(audio)
        if x.ndim != 1:
            raise ReadtalkError(f"audio must be mono 16 kHz samples (N,), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ReadtalkError(f"audio array must be float in [-1, 1], got {x.dtype}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ReadtalkError("audio contains NaN or infinite samples")
        frames_for_samples(len(x))
        return x

    # ---- settings

    def settings(self, **kw: Any) -> dict:
        """Resolve generation settings: explicit arguments, then the model's defaults."""
        d = self.defaults
        out = {
            "steps": int(kw.get("steps") or d.get("steps", 8)),
            "shift": float(kw.get("shift") or d.get("shift", 1.0)),
            "guidance": kw.get("guidance") or d.get("guidance", "split"),
            "alpha": float(kw["alpha"] if kw.get("alpha") is not None else d.get("alpha", 2.0)),
            "beta": float(kw["beta"] if kw.get("beta") is not None else d.get("beta", 6.0)),
            "gamma": float(kw["gamma"] if kw.get("gamma") is not None else d.get("gamma", 6.0)),
            "clip_frames": int(kw.get("clip_frames") or d.get("clip_frames", 121)),
            "motion_latents": int(
                kw["motion_latents"]
                if kw.get("motion_latents") is not None
                else d.get("motion_latents", 1)
            ),
            "seed": int(kw.get("seed") or 0),
            "ans": bool(kw.get("ans", True)),
            "motion_from": kw.get("motion_from") or d.get("motion_from", "frames"),
            "decode_context": int(
                kw["decode_context"]
                if kw.get("decode_context") is not None
                else d.get("decode_context", DECODE_CONTEXT)
            ),
        }
        if out["steps"] < 1:
            raise ReadtalkError(f"steps must be >= 1, got {out['steps']}")
        if out["decode_context"] < 0:
            raise ReadtalkError(f"decode context must be >= 0, got {out['decode_context']}")
        if out["motion_from"] not in ("frames", "latents"):
            raise ReadtalkError(
                f"motion_from must be 'frames' or 'latents', got {out['motion_from']!r}"
            )
        cf, tf = out["clip_frames"], self.vae.temporal_factor
        if cf < 1 + tf or (cf - 1) % tf:
            raise ReadtalkError(f"clip frames must be {tf}k+1 with k >= 1 (e.g. 121), got {cf}")
        return out

    # ---- generation

    def iter_video(
        self,
        image: str | os.PathLike | np.ndarray,
        audio: np.ndarray,
        *,
        progress: bool = True,
        on_plan: Callable[[list], None] | None = None,
        **kw: Any,
    ) -> Iterator[np.ndarray]:
        """Yield the output video as uint8 (n, H, W, 3) runs of frames, in order, clip by clip.

        ``audio`` must already be prepared (``prepare_audio``). Settings as ``__call__``.
        """
        import torch

        gen = torch.no_grad()(self._iter_video)
        return gen(image, audio, progress=progress, on_plan=on_plan, **kw)

    def _iter_video(
        self,
        image: str | os.PathLike | np.ndarray,
        audio: np.ndarray,
        *,
        progress: bool = True,
        on_plan: Callable[[list], None] | None = None,
        **kw: Any,
    ) -> Iterator[np.ndarray]:
        import torch
        from tqdm import tqdm

        from readtalk.diffusion import Guidance, iter_clips, plan_clips, timestep_schedule
        from readtalk.speech.speechae import window_codes
        from readtalk.train.vae import to_tensor, to_uint8

        st = self.settings(**kw)
        guidance = Guidance(
            mode=st["guidance"], alpha=st["alpha"], beta=st["beta"], gamma=st["gamma"]
        )
        tf = self.vae.temporal_factor
        clip_latents = 1 + (st["clip_frames"] - 1) // tf
        total = frames_for_samples(len(audio))
        plan = plan_clips(total, clip_latents, st["motion_latents"], last="pad")
        if on_plan is not None:
            on_plan(plan)
        dev, dt = self.device, self.dtype
        schedule = timestep_schedule(st["steps"], st["shift"])

        # reference latent (B=1): the portrait as a one-frame clip
        img = self.prepare_image(image)
        ref_px = to_tensor(img[None])[None].to(dev, dt)  # (1, 3, 1, H, W)
        ref = self._normalize(self.vae.encode(ref_px).float())  # (1, C, 1, h, w)
        _, c, _, h, w = ref.shape

        def codes_for(window) -> Tensor:  # (1, f, A), over the window's own audio
            return window_codes(
                self.speechae, self.front_end, audio, window.frame_start, window.frames
            ).to(dev)

        def model_fn(z, t, rm, am, cond):
            return self.dit(z.to(dt), t, cond["ref"].to(dt), cond["audio"].to(dt), rm, am)

        motion_mode = "async" if st["ans"] else "plain"
        # Motion latents of a later clip: by default the previous clip's last 8(m - 1) + 1
        # decoded frames encoded again (a first latent of the kind training saw: the cache
        # encodes every window from its own first frame); "latents" reuses the previous clip's
        # last m latents as they are, which each summarise 8 frames, and leaves a jump at every
        # clip boundary.
        from readtalk.diffusion.ans import overlap_frames

        # [the last ``ov`` decoded frames] (across clips: a clip decoded after the previous one's
        # latents may yield fewer than ``ov`` new frames), the next clip's motion is encoded from
        tail: list[Tensor] = []
        ov = overlap_frames(st["motion_latents"], tf)

        def motion_from_frames(prev: Tensor, window) -> Tensor:
            return self._normalize(self.vae.encode(tail[0]).float())

        gen = torch.Generator(device=dev).manual_seed(st["seed"])
        bar = tqdm(
            total=len(plan) * st["steps"], desc="generate", unit="step", disable=not progress
        )

        def cond_for(window) -> dict[str, Tensor]:
            bar.set_postfix(clip=f"{window.index + 1}/{len(plan)}")
            return {"ref": ref, "audio": codes_for(window)}

        clips = iter_clips(
            model_fn,
            plan,
            cond_for,
            schedule,
            (1, c, h, w),
            generator=gen,
            motion_mode=motion_mode,
            guidance=guidance,
            motion_fn=motion_from_frames if st["motion_from"] == "frames" else None,
            device=dev,
            dtype=torch.float32,
            callback=lambda i, _z: bar.update(1),
        )
        # Decoder context: a later clip's new latents are decoded after the last
        # ``decode_context`` latents before them (the previous clip's, kept in ``history``), so
        # the causal decoder continues one latent sequence instead of starting afresh at every
        # clip, which leaves a jump. 0 (or a decoder that is not causal): every clip on its own.
        keep = min(st["decode_context"], self.vae.config.decoder_context)
        carry = keep > 0 and self.vae.config.decoder_causal
        history: Tensor | None = None  # the last ``keep`` latents decoded so far
        decode_state: dict = {}  # what the VAE carries from one clip's decoding to the next
        try:
            for window, z in zip(plan, clips, strict=True):
                latent = self._denormalize(z.float()).to(dt)
                m = window.motion_latents
                prefix = history if carry and history is not None and m > 0 else None
                if prefix is not None:  # decode only the new latents, after the earlier ones
                    latent = latent[:, :, m:]
                    done = overlap_frames(m, tf)  # they start after the overlap frames
                else:
                    done = 0  # clip-local index of the next decoded frame
                if carry:
                    seq = latent if prefix is None else torch.cat([prefix, latent], dim=2)
                    history = seq[:, :, -keep:]
                state = decode_state if carry else None
                for run in self.vae.iter_decode(latent, prefix=prefix, state=state):
                    a, b = done, done + run.shape[2]
                    done = b
                    if ov:
                        tail[:] = [torch.cat([*tail, run[:, :, -ov:]], dim=2)[:, :, -ov:]]
                    lo, hi = max(a, window.keep_start), min(b, window.keep_stop)
                    if lo < hi:
                        yield to_uint8(run[0, :, lo - a : hi - a])
        finally:
            bar.close()

    def __call__(
        self,
        image: str | os.PathLike | np.ndarray,
        audio: str | os.PathLike | np.ndarray,
        *,
        steps: int | None = None,
        guidance: str | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        gamma: float | None = None,
        seed: int = 0,
        clip_frames: int | None = None,
        motion_latents: int | None = None,
        shift: float | None = None,
        ans: bool = True,
        motion_from: str | None = None,
        decode_context: int | None = None,
        progress: bool = True,
    ) -> GenerationResult:
        """Generate in memory; ``result.frames`` is uint8 (F, H, W, 3), F = ceil(N / 640).

        ``None`` settings take the model's defaults (steps 8, Split-CFG alpha 2 / beta 6, joint
        gamma 6, clips of 121 frames with 1 motion latent, shift 1). ``guidance``: "split",
        "joint" or "none" (conditional only). ``ans=False``: plain chunking (no motion frames;
        same timeline and compute), the ablation. ``motion_from``: "frames" (default: a later
        clip's motion latents are the previous clip's last decoded frames encoded again) or
        "latents" (its last latents reused as they are; the ablation). ``decode_context``
        (default 8): a later clip's new latents are decoded after that many latents of the
        previous clip, so the causal VAE decoder continues one latent sequence; 0 decodes every
        clip on its own (the ablation: a jump at every clip start).
        """
        kw = dict(
            steps=steps, guidance=guidance, alpha=alpha, beta=beta, gamma=gamma, seed=seed,
            clip_frames=clip_frames, motion_latents=motion_latents, shift=shift, ans=ans,
            motion_from=motion_from, decode_context=decode_context,
        )  # fmt: skip
        t0 = time.perf_counter()
        x = self.prepare_audio(audio)
        plans: list = []
        runs = list(self.iter_video(image, x, progress=progress, on_plan=plans.append, **kw))
        frames = np.concatenate(runs, axis=0)
        assert len(frames) == frames_for_samples(len(x))
        return GenerationResult(
            num_frames=len(frames),
            fps=FPS,
            size=self.size,
            audio=x,
            clips=len(plans[0]),
            seconds=time.perf_counter() - t0,
            frames=frames,
            settings=self.settings(**kw),
        )

    def generate_to_file(
        self,
        image: str | os.PathLike | np.ndarray,
        audio: str | os.PathLike | np.ndarray,
        out: str | os.PathLike,
        **kw: Any,
    ) -> GenerationResult:
        """Generate straight into an mp4 (H.264 + AAC of the original audio), frame runs written
        as they are decoded; the file appears only once complete. Settings as ``__call__``."""
        from readtalk.media import VideoWriter

        progress = kw.pop("progress", True)
        t0 = time.perf_counter()
        x = self.prepare_audio(audio)
        image = self.prepare_image(image)  # fail on a bad image before any work
        plans: list = []
        with VideoWriter(out, self.size, self.size, fps=FPS) as vw:
            vw.add_audio(x)
            for run in self.iter_video(image, x, progress=progress, on_plan=plans.append, **kw):
                for frame in run:
                    vw.write(frame)
            n = vw.frames_written
        assert n == frames_for_samples(len(x))
        return GenerationResult(
            num_frames=n,
            fps=FPS,
            size=self.size,
            audio=x,
            clips=len(plans[0]),
            seconds=time.perf_counter() - t0,
            path=Path(out),
            settings=self.settings(**kw),
        )


# ------------------------------------------------------------------------------------ CLI


def configure_generate_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``readtalk generate``."""
    p.add_argument("--image", required=True, help="portrait (PNG/JPEG)")
    p.add_argument(
        "--crop",
        choices=("center", "face"),
        default="center",
        help="centre square, or frame the detected face as prepared footage is",
    )
    p.add_argument("--audio", required=True, help="speech (any audio file or video's audio)")
    p.add_argument("--out", required=True, help="mp4 to write")
    p.add_argument(
        "--model", default=None, help="model folder: vae/speechae/dit.safetensors (+pipeline.json)"
    )
    p.add_argument("--vae", default=None, help="vae.safetensors (instead of --model)")
    p.add_argument("--speech", default=None, help="speechae.safetensors (instead of --model)")
    p.add_argument("--dit", default=None, help="dit.safetensors (instead of --model)")
    p.add_argument("--whisper", default=None, help="Whisper-tiny weights (default: packaged)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: model's, 8)")
    p.add_argument(
        "--cfg",
        choices=("split", "joint", "none"),
        default=None,
        help="guidance: split (ref alpha, audio beta), joint (gamma) or none (default: split)",
    )
    p.add_argument("--alpha", type=float, default=None, help="Split-CFG reference scale (2)")
    p.add_argument("--beta", type=float, default=None, help="Split-CFG audio scale (6)")
    p.add_argument("--gamma", type=float, default=None, help="Joint-CFG scale (6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clip-frames", type=int, default=None, help="frames per clip, 8k+1 (default 121)"
    )
    p.add_argument(
        "--no-ans", action="store_true", help="plain chunking without motion frames (ablation)"
    )
    p.add_argument(
        "--motion-from",
        choices=("frames", "latents"),
        default=None,
        help="a later clip's motion: the previous clip's last frames re-encoded (default) or "
        "its last latents as they are (ablation)",
    )
    p.add_argument(
        "--decode-context",
        type=int,
        default=None,
        metavar="N",
        help=f"latents of the previous clip the VAE decoder continues from (default "
        f"{DECODE_CONTEXT}; 0: every clip decoded on its own, the ablation)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--dtype", choices=_DTYPES, default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def model_files(root: str | os.PathLike) -> dict[str, Path]:
    """The weights files of a model folder (``Pipeline.from_pretrained``)."""
    return {k: Path(root) / f"{k}.safetensors" for k in ("vae", "speechae", "dit")}


def face_crop(image: np.ndarray, size: int, margin: float = 2.0, lift: float = 0.15) -> np.ndarray:
    """The largest face of an RGB image, framed like ``readtalk prepare``'s clips."""
    from readtalk.data import faces

    found = faces.FaceDetector()(image)
    if not found:
        raise ReadtalkError("no face found in the portrait (use --crop center to skip detection)")
    face = max(found, key=lambda f: f.size)
    h, w = image.shape[:2]
    box = faces.crop_boxes(face.box[None], margin, lift, w, h)[0]
    return faces.crop_frame(image, box, size)


def load_pipeline_from_args(a: argparse.Namespace) -> Pipeline:
    explicit = [a.vae, a.speech, a.dit]
    if a.model and any(explicit):
        raise ReadtalkError("give either --model or --vae/--speech/--dit, not both")
    if a.model:
        return Pipeline.from_pretrained(a.model, whisper=a.whisper, device=a.device, dtype=a.dtype)
    if not all(explicit):
        raise ReadtalkError("give --model DIR, or all three of --vae, --speech and --dit")
    return Pipeline.from_files(
        vae=a.vae, speech=a.speech, dit=a.dit, whisper=a.whisper, device=a.device, dtype=a.dtype
    )


def cmd_generate(a: argparse.Namespace) -> None:
    """``readtalk generate``."""
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    pipe = load_pipeline_from_args(a)
    res = pipe.generate_to_file(
        pipe.prepare_image(a.image, a.crop),
        a.audio,
        a.out,
        steps=a.steps,
        guidance=a.cfg,
        alpha=a.alpha,
        beta=a.beta,
        gamma=a.gamma,
        seed=a.seed,
        clip_frames=a.clip_frames,
        ans=not a.no_ans,
        motion_from=a.motion_from,
        decode_context=a.decode_context,
        progress=not a.quiet,
    )
    print(
        f"wrote {res.path}: {res.num_frames} frames ({res.duration:.2f} s at {res.fps} fps, "
        f"{res.size}x{res.size}, {res.clips} clip{'s' if res.clips != 1 else ''}) in "
        f"{res.seconds:.1f} s (real-time factor {res.realtime_factor:.2f})"
    )


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``readtalk generate`` on the top-level subparsers of cli.py."""
    p = subparsers.add_parser("generate", help="portrait + speech -> talking-head mp4")
    configure_generate_parser(p)
    p.set_defaults(func=cmd_generate)
    return p
