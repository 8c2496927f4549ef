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
from typing import Any

import torch

from readtalk.device import resolve_device, resolve_dtype
from readtalk.diffusion import Guidance, ans_sample, timestep_schedule
from readtalk.dit.model import DIT_SIZES, A2VDiT, num_params
from readtalk.errors import ReadtalkError
from readtalk.speech.frontend import load_front_end
from readtalk.speech.speechae import SPEECHAE_SIZES, SpeechAE, SpeechAEConfig, window_codes
from readtalk.speech.whisper import default_whisper_path
from readtalk.vae.config import get_preset
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

    if size not in DIT_SIZES:
        raise ReadtalkError(f"unknown DiT size {size!r}; choose one of {', '.join(DIT_SIZES)}")
    dcfg = DIT_SIZES[size]
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
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
    if front_end == "auto":
        front_end = "whisper" if (whisper or default_whisper_path()) else "logmel"
    fe = load_front_end(front_end, whisper, device=dev)

    f = 1 + (clip_frames - 1) // 8
    h = w = res // vcfg.spatial_factor
    seconds = clip_frames / 25
    torch.manual_seed(0)
    dit = A2VDiT(dcfg).to(dev, dt).eval()
    vae = VideoVAE(vcfg)
    if factorised:  # the preset's single-frame path on every frame + the packer
        vae = FactorisedVAE(FactorisedConfig(frame=vcfg, channels=vcfg.latent_channels), frame=vae)
    vae = vae.to(dev, dt).eval()
    base = next((c for c in SPEECHAE_SIZES.values() if c.code_dim == dcfg.audio_dim), None)
    scfg = SpeechAEConfig(
        feat_dim=2 * fe.dim,
        hidden=base.hidden if base else 256,
        code_dim=dcfg.audio_dim,
        blocks=base.blocks if base else 1,
        front_end=fe.name,
    )
    sae = SpeechAE(scfg).to(dev).eval()

    g = torch.Generator(device=dev).manual_seed(0)
    c = dcfg.latent_channels
    x = torch.randn(1, c, f, h, w, generator=g, device=dev)
    ref = torch.randn(1, c, 1, h, w, generator=g, device=dev)
    codes = torch.randn(1, f, dcfg.audio_dim, generator=g, device=dev)
    t = torch.full((1, 1 + f), 0.5, device=dev)
    t[:, 0] = 0
    audio = (0.1 * torch.randn(int(seconds * 16000), generator=g, device=dev)).cpu().numpy()

    def model_fn(z, tt, rm, am, cond):
        return dit(z.to(dt), tt, cond["ref"].to(dt), cond["audio"].to(dt), rm, am)

    cond = {"ref": ref, "audio": codes}
    schedule = timestep_schedule(steps)

    log(
        f"bench speed: DiT {size} ({num_params(dcfg) / 1e6:.1f} M params), "
        f"VAE {vae.config.name}, "
        f"{front_end} front end, {clip_frames} frames at {res}x{res} "
        f"(latents {c}x{f}x{h}x{w}, {(1 + f) * h * w} tokens), {steps} steps, {cfg} guidance "
        f"({guidance.passes} passes), {dev.type} {str(dt).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads, on {processor_name(dev)}"
    )
    with torch.inference_mode():
        t_fwd, _ = _timed(lambda: model_fn(x, t, None, None, cond), dev, repeats)
        t_clip, lat = _timed(
            lambda: ans_sample(
                model_fn,
                torch.randn(1, c, f, h, w, generator=g, device=dev),
                schedule,
                motion=x[:, :, :1],
                cond=cond,
                guidance=guidance,
            ),
            dev,
            1,
        )
        t_dec, _ = _timed(lambda: vae.decode(lat.to(dt)), dev, 1)

        t_sp, _ = _timed(lambda: window_codes(sae, fe, audio, 0, clip_frames), dev, repeats)

    flops = dit_flops(dcfg, f, h, w)
    per_clip = flops["total"] * steps * guidance.passes
    total = t_clip + t_dec + t_sp
    res_d = {
        "dit_forward_s": t_fwd,
        "clip_s": t_clip,
        "vae_decode_s": t_dec,
        "speech_s": t_sp,
        "total_s": total,
        "clip_seconds": seconds,
        "rtf": total / seconds,
        "dit_flops_forward": flops["total"],
        "dit_flops_clip": per_clip,
    }
    rows = [
        ("DiT forward (1 pass)", f"{t_fwd * 1e3:.1f} ms"),
        (f"clip ({steps} steps x {guidance.passes} passes)", f"{t_clip:.3f} s"),
        (f"VAE decode ({clip_frames} frames)", f"{t_dec:.3f} s"),
        ("speech (front end + SpeechAE)", f"{t_sp * 1e3:.1f} ms"),
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
        f"{_fmt_flops(per_clip)} per clip; achieved {per_clip / t_clip / 1e9:.1f} GFLOP/s"
    )
    return res_d


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
