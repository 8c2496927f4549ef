"""``readtalk bench speed``: how fast is one generation clip, on random weights?

Times, for one clip of ``clip_frames`` frames (121 = 4.84 s at 25 fps) at ``res`` pixels:

* one DiT forward pass on the clip's latents (batch 1, reference frame included);
* one full clip: ``steps`` Euler steps of ANS sampling (with one motion latent), each
  ``passes`` model evaluations (3 for Split-CFG, 2 joint, 1 none; batched into one call);
* the VAE decode of the clip's latents;
* the speech path: front end (Whisper-tiny or log-mel) + SpeechAE encoder over 4.84 s.

The real-time factor is (clip + decode + speech) / clip duration; below 1 is faster than real
time. No checkpoint is needed: every model is randomly initialised at the named size.

**DiT FLOPs** (``dit_flops``; multiply-add = 2 FLOPs, biases, norms, RoPE, softmax and
element-wise ops ignored). With width ``D``, MLP hidden ``H = mlp_ratio * D``, ``f`` latent
frames of ``S = h * w`` tokens, ``L = (1 + f) S`` tokens (reference + video), ``V = f S`` video
tokens, ``M = (2k + 1) n`` speech context tokens per frame (``n = audio_tokens``,
``k = audio_window``), per block:

* self-attention projections ``2 L (4 D^2)`` (qkv + out) and scores / values ``4 L^2 D``;
* cross-attention projections ``2 V (2 D^2)`` (q + out) + ``2 f M (2 D^2)`` (k, v) and
  scores / values ``4 V M D``;
* MLP ``2 L (2 D H)``;

plus once per pass: patch embedding ``2 L C D``, output ``2 V D C``, speech projection
``2 f (A D + n D^2)`` and the timestep MLP / modulation ``2 (1 + f) (F_t D + D^2 + 9 D^2 + 2 D^2)``.
That is "2 x (parameters x tokens they touch) + 4 L^2 D per layer". Per clip: ``steps x passes``
forwards.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from readtalk.device import resolve_device, resolve_dtype
from readtalk.diffusion import Guidance, ans_sample, timestep_schedule
from readtalk.dit.model import DIT_SIZES, A2VDiT, DiTConfig, num_params
from readtalk.errors import ReadtalkError
from readtalk.speech.frontend import load_front_end
from readtalk.speech.speechae import SPEECHAE_SIZES, SpeechAE, SpeechAEConfig, window_codes
from readtalk.speech.whisper import default_whisper_path
from readtalk.vae.config import VAEConfig, get_preset
from readtalk.vae.factorised import FactorisedConfig, FactorisedVAE
from readtalk.vae.model import VideoVAE

__all__ = [
    "dit_flops",
    "processor_name",
    "run_speed",
]

_VAE_FOR_CHANNELS = {8: "debug", 32: "small", 64: "base", 128: "ltx"}


def processor_name(device: Any = "cpu") -> str:
    """What the timings ran on: the GPU's name, or the CPU's model name and its core count (CPU
    timings differ several-fold between machines with the same number of cores)."""

    if getattr(device, "type", device) == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name
            )
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs)"


def dit_flops(cfg: Any, frames: int, height: int, width: int) -> dict[str, float]:
    """Analytic FLOPs of one DiT forward pass (batch 1) on ``frames`` latent frames of
    ``height x width`` latents (module docstring). Returns linear / attention / total."""
    d, c, a = cfg.width, cfg.latent_channels, cfg.audio_dim
    hid = int(d * cfg.mlp_ratio)
    n, k = cfg.audio_tokens, cfg.audio_window
    s = height * width
    f = frames
    tok, vid, m = (1 + f) * s, f * s, (2 * k + 1) * n
    per_block_linear = (
        2 * tok * 4 * d * d  # self-attention qkv + out
        + 2 * vid * 2 * d * d  # cross-attention q + out
        + 2 * f * m * 2 * d * d  # cross-attention k, v on the speech tokens
        + 2 * tok * 2 * d * hid  # MLP
    )
    per_block_attn = 4 * tok * tok * d + 4 * vid * m * d
    once = (
        2 * tok * c * d  # patch embedding
        + 2 * vid * d * c  # final linear
        + 2 * f * d * 2 * d  # final modulation
        + 2 * f * (a * d + d * n * d)  # speech projection
        + 2 * (1 + f) * (cfg.freq_dim * d + d * d + 9 * d * d)  # timestep MLP + adaLN-single
    )
    linear = cfg.depth * per_block_linear + once
    attention = cfg.depth * per_block_attn
    return {
        "linear": float(linear),
        "attention": float(attention),
        "total": float(linear + attention),
    }


def _fmt_flops(x: float) -> str:
    return f"{x / 1e12:.2f} TFLOP" if x >= 1e12 else f"{x / 1e9:.2f} GFLOP"


def _sync(device: torch.device) -> None:

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, Any]:
    """Best of ``repeats`` wall times (seconds) after one warm-up call; returns (time, output)."""
    out = fn()
    _sync(device)
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


@dataclass(frozen=True)
class _Setup:
    """The checked settings of one speed run and the clip's latent shape."""

    size: str
    dit: DiTConfig
    vae: VAEConfig
    device: torch.device
    dtype: torch.dtype
    guidance: Guidance
    steps: int
    clip_frames: int
    res: int

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(channels, frames, height, width) of the clip's latents."""
        side = self.res // self.vae.spatial_factor
        return self.dit.latent_channels, 1 + (self.clip_frames - 1) // 8, side, side

    @property
    def seconds(self) -> float:
        return self.clip_frames / 25


@dataclass(frozen=True)
class _Models:
    """The randomly initialised networks of the bench."""

    dit: A2VDiT
    vae: VideoVAE | FactorisedVAE
    speechae: SpeechAE


@dataclass(frozen=True)
class _Inputs:
    """Random inputs of one clip; ``generator`` draws the sampling noise after them."""

    latents: torch.Tensor  # (1, C, f, h, w)
    ref: torch.Tensor  # (1, C, 1, h, w)
    codes: torch.Tensor  # (1, f, audio_dim)
    t: torch.Tensor  # (1, 1 + f): 0 for the reference, 0.5 for the video
    audio: np.ndarray  # 16 kHz waveform of the clip's duration
    generator: torch.Generator


@dataclass(frozen=True)
class _Timings:
    """Wall times (seconds) of the parts of one clip."""

    forward: float  # one DiT pass
    clip: float  # ``steps`` sampling steps of ``passes`` DiT evaluations each
    decode: float  # VAE decode of the clip's latents
    speech: float  # front end + SpeechAE encoder

    @property
    def total(self) -> float:
        return self.clip + self.decode + self.speech


def _setup(
    size: str,
    res: int,
    vae_preset: str | None,
    steps: int,
    cfg: str,
    clip_frames: int,
    device: str,
    dtype: str,
) -> _Setup:
    """Check the settings (errors name the CLI's flags) and resolve device, dtype and VAE."""

    if size not in DIT_SIZES:
        raise ReadtalkError(f"unknown DiT size {size!r}; choose one of {', '.join(DIT_SIZES)}")
    dcfg = DIT_SIZES[size]
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if size == "paper" and dev.type != "cuda":
        raise ReadtalkError(
            "the paper-size DiT (~2B parameters, 8 GB in float32) is for --device cuda only; "
            "use --flops-only for its FLOPs on any machine"
        )
    if clip_frames < 9 or (clip_frames - 1) % 8:
        raise ReadtalkError(f"clip frames must be 8k+1 with k >= 1 (e.g. 121), got {clip_frames}")
    if res <= 0 or res % 32:
        raise ReadtalkError(f"--res must be a positive multiple of 32, got {res}")
    if steps < 1:
        raise ReadtalkError(f"steps must be >= 1, got {steps}")
    guidance = Guidance(mode=cfg)

    preset = vae_preset or _VAE_FOR_CHANNELS.get(dcfg.latent_channels)
    if preset is None:
        raise ReadtalkError(
            f"no VAE preset with {dcfg.latent_channels} channels: pass --vae-preset"
        )
    vcfg = get_preset(preset)
    if vcfg.latent_channels != dcfg.latent_channels:
        raise ReadtalkError(
            f"VAE preset {preset} has {vcfg.latent_channels} latent channels but DiT {size} takes "
            f"{dcfg.latent_channels}"
        )
    return _Setup(size, dcfg, vcfg, dev, dt, guidance, steps, clip_frames, res)


def _random_models(s: _Setup, fe: Any, factorised: bool) -> _Models:
    """DiT, VAE and a SpeechAE whose codes fit the DiT, randomly initialised (seed 0)."""

    torch.manual_seed(0)
    dit = A2VDiT(s.dit).to(s.device, s.dtype).eval()
    vae = VideoVAE(s.vae)
    if factorised:  # the preset's single-frame path on every frame + the packer
        vae = FactorisedVAE(
            FactorisedConfig(frame=s.vae, channels=s.vae.latent_channels), frame=vae
        )
    vae = vae.to(s.device, s.dtype).eval()
    base = next((c for c in SPEECHAE_SIZES.values() if c.code_dim == s.dit.audio_dim), None)
    scfg = SpeechAEConfig(
        feat_dim=2 * fe.dim,
        hidden=base.hidden if base else 256,
        code_dim=s.dit.audio_dim,
        blocks=base.blocks if base else 1,
        front_end=fe.name,
    )
    return _Models(dit, vae, SpeechAE(scfg).to(s.device).eval())


def _random_inputs(s: _Setup) -> _Inputs:
    """Latents, reference, speech codes, timesteps and audio of one clip (generator seed 0)."""

    dev = s.device
    c, f, h, w = s.latent_shape
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, c, f, h, w, generator=g, device=dev)
    ref = torch.randn(1, c, 1, h, w, generator=g, device=dev)
    codes = torch.randn(1, f, s.dit.audio_dim, generator=g, device=dev)
    t = torch.full((1, 1 + f), 0.5, device=dev)
    t[:, 0] = 0
    audio = (0.1 * torch.randn(int(s.seconds * 16000), generator=g, device=dev)).cpu().numpy()
    return _Inputs(x, ref, codes, t, audio, g)


def _header(s: _Setup, vae_name: str, front_end: str) -> str:
    """The report's first line: what is timed, at which size, on what."""

    c, f, h, w = s.latent_shape
    return (
        f"bench speed: DiT {s.size} ({num_params(s.dit) / 1e6:.1f} M params), "
        f"VAE {vae_name}, "
        f"{front_end} front end, {s.clip_frames} frames at {s.res}x{s.res} "
        f"(latents {c}x{f}x{h}x{w}, {(1 + f) * h * w} tokens), {s.steps} steps, "
        f"{s.guidance.mode} guidance ({s.guidance.passes} passes), {s.device.type} "
        f"{str(s.dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads, on {processor_name(s.device)}"
    )


@torch.inference_mode()
def _time_dit(
    dit: A2VDiT, inputs: _Inputs, s: _Setup, repeats: int
) -> tuple[float, float, torch.Tensor]:
    """One DiT forward pass (best of ``repeats``) and one clip of ANS sampling (one motion
    latent); returns (forward seconds, clip seconds, the clip's latents)."""

    def model_fn(z, tt, rm, am, cond):
        return dit(z.to(s.dtype), tt, cond["ref"].to(s.dtype), cond["audio"].to(s.dtype), rm, am)

    x, g, dev = inputs.latents, inputs.generator, s.device
    cond = {"ref": inputs.ref, "audio": inputs.codes}
    schedule = timestep_schedule(s.steps)
    t_fwd, _ = _timed(lambda: model_fn(x, inputs.t, None, None, cond), dev, repeats)
    t_clip, lat = _timed(
        lambda: ans_sample(
            model_fn,
            torch.randn(*x.shape, generator=g, device=dev),
            schedule,
            motion=x[:, :, :1],
            cond=cond,
            guidance=s.guidance,
        ),
        dev,
        1,
    )
    return t_fwd, t_clip, lat


@torch.inference_mode()
def _time_vae_decode(vae: VideoVAE | FactorisedVAE, latents: torch.Tensor, s: _Setup) -> float:

    t_dec, _ = _timed(lambda: vae.decode(latents.to(s.dtype)), s.device, 1)
    return t_dec


@torch.inference_mode()
def _time_speech(speechae: SpeechAE, fe: Any, audio: np.ndarray, s: _Setup, repeats: int) -> float:
    """Front end + SpeechAE encoder over the clip's audio, best of ``repeats``."""

    t_sp, _ = _timed(lambda: window_codes(speechae, fe, audio, 0, s.clip_frames), s.device, repeats)
    return t_sp


def _numbers(times: _Timings, s: _Setup, flops: dict[str, float]) -> dict[str, float]:
    """The bench's results: timings, real-time factor and DiT FLOPs per forward and per clip."""

    return {
        "dit_forward_s": times.forward,
        "clip_s": times.clip,
        "vae_decode_s": times.decode,
        "speech_s": times.speech,
        "total_s": times.total,
        "clip_seconds": s.seconds,
        "rtf": times.total / s.seconds,
        "dit_flops_forward": flops["total"],
        "dit_flops_clip": flops["total"] * s.steps * s.guidance.passes,
    }


def _log_report(log, times: _Timings, s: _Setup, flops: dict[str, float]) -> None:
    """The timing table, the real-time factor and the DiT's FLOPs and throughput."""

    steps, passes, seconds, total = s.steps, s.guidance.passes, s.seconds, times.total
    per_clip = flops["total"] * steps * passes
    rows = [
        ("DiT forward (1 pass)", f"{times.forward * 1e3:.1f} ms"),
        (f"clip ({steps} steps x {passes} passes)", f"{times.clip:.3f} s"),
        (f"VAE decode ({s.clip_frames} frames)", f"{times.decode:.3f} s"),
        ("speech (front end + SpeechAE)", f"{times.speech * 1e3:.1f} ms"),
        ("total (clip + decode + speech)", f"{total:.3f} s"),
    ]
    for name, value in rows:
        log(f"  {name:<32}{value:>12}")
    log(
        f"  real-time factor {total / seconds:.3f} for {seconds:.2f} s of video "
        f"({seconds / total:.2f}x real time)"
    )
    log(
        f"  DiT FLOPs: {_fmt_flops(flops['total'])} per forward "
        f"({100 * flops['attention'] / flops['total']:.0f}% attention), "
        f"{_fmt_flops(per_clip)} per clip; achieved {per_clip / times.clip / 1e9:.1f} GFLOP/s"
    )


def run_speed(
    size: str = "small",
    res: int = 256,
    *,
    vae_preset: str | None = None,
    steps: int = 8,
    cfg: str = "split",
    clip_frames: int = 121,
    device: str = "cpu",
    dtype: str = "float32",
    front_end: str = "auto",
    whisper: str | None = None,
    repeats: int = 1,
    factorised: bool = False,
    log=print,
) -> dict[str, float]:
    """Run the speed bench; prints a report through ``log`` and returns the numbers."""

    s = _setup(size, res, vae_preset, steps, cfg, clip_frames, device, dtype)
    if front_end == "auto":
        front_end = "whisper" if (whisper or default_whisper_path()) else "logmel"
    fe = load_front_end(front_end, whisper, device=s.device)
    models = _random_models(s, fe, factorised)
    inputs = _random_inputs(s)

    log(_header(s, models.vae.config.name, front_end))
    t_fwd, t_clip, latents = _time_dit(models.dit, inputs, s, repeats)
    times = _Timings(
        forward=t_fwd,
        clip=t_clip,
        decode=_time_vae_decode(models.vae, latents, s),
        speech=_time_speech(models.speechae, fe, inputs.audio, s, repeats),
    )
    flops = dit_flops(s.dit, *s.latent_shape[1:])
    _log_report(log, times, s, flops)
    return _numbers(times, s, flops)


def flops_report(size: str, res: int, clip_frames: int, steps: int, cfg: str) -> str:
    """One line: the DiT's FLOPs per forward and per clip at a size, without running it."""

    if size not in DIT_SIZES:
        raise ReadtalkError(f"unknown DiT size {size!r}; choose one of {', '.join(DIT_SIZES)}")
    if res <= 0 or res % 32 or clip_frames < 9 or (clip_frames - 1) % 8:
        raise ReadtalkError("--res must be a multiple of 32 and --clip-frames 8k+1")
    dcfg = DIT_SIZES[size]
    f, hw = 1 + (clip_frames - 1) // 8, res // 32
    fl = dit_flops(dcfg, f, hw, hw)
    passes = Guidance(mode=cfg).passes
    return (
        f"DiT {size} ({num_params(dcfg) / 1e6:.1f} M params), {clip_frames} frames at "
        f"{res}px ({(1 + f) * hw * hw} tokens): {_fmt_flops(fl['total'])} per forward "
        f"({100 * fl['attention'] / fl['total']:.0f}% attention), "
        f"{_fmt_flops(fl['total'] * steps * passes)} per clip "
        f"({steps} steps x {passes} passes)"
    )
