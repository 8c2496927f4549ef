"""``readtalk bench speed --profile``: where a real generation's time goes, against the limit.

It generates a video with a trained model (default: the shipped demo model) through the same
``Pipeline.generate_to_file`` users call, reads the wall time the session and the mp4 writer
recorded per stage (``readtalk.profiling.StageTimes``), counts each stage's floating-point
work once with ``torch.utils.flop_counter.FlopCounterMode`` on a representative call (one DiT
call with its guidance batch, one clip's speech window, one clip's decode, one re-encoded
frame) and scales it by the calls the run made, and measures this machine's dense matmul
peak in fp32 and bf16 in the same process. Every stage then has seconds, GFLOP, GFLOP/s and
its fraction of each peak; the end-to-end real-time factor includes the process start-up
(interpreter, imports, model loading) when the process start time can be read (Linux).

Stages: ``speech`` (Whisper front end + SpeechAE over each clip's window), ``dit`` (every
Euler step of every clip: one DiT call of ``passes`` rows per step), ``decode`` (VAE packer +
frame decoder), ``frames`` (to uint8), ``encode`` (the motion frame re-encoded per clip),
``mp4`` (x264 + AAC + muxing). FLOPs count matrix products and convolutions (attention
included); element-wise work is time without FLOPs.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from readtalk.bench import processor_name
from readtalk.demo import demo_portrait
from readtalk.live import speech_for
from readtalk.media import SAMPLES_PER_FRAME
from readtalk.pipeline import Pipeline
from readtalk.profiling import matmul_peak
from readtalk.speech.rolling import latent_codes
from readtalk.speech.speechae import window_codes

__all__ = [
    "count_flops",
    "process_age",
    "profile_generation",
    "profile_runs",
    "profile_table",
    "stage_flops",
]

STAGES = ("speech", "dit", "decode", "frames", "encode", "mp4")


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (matrix products, convolutions, attention)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def stage_flops(pipe: Any, settings: Any) -> dict[str, float]:
    """FLOPs of one unit of each stage: per DiT call (a whole guidance batch), per speech
    window, per decoded frame, per re-encoded frame."""
    md = pipe.models
    f, frames = settings.clip_latents(md.vae.temporal_factor), settings.clip_frames
    side = pipe.size // md.vae.spatial_factor
    cfg = md.dit.cfg
    passes = settings.guidance_config().passes
    g = torch.Generator().manual_seed(0)
    x = torch.randn(passes, cfg.latent_channels, f, side, side, generator=g)
    ref = torch.randn(passes, cfg.latent_channels, 1, side, side, generator=g)
    t = torch.rand(passes, 1 + f, generator=g)
    keep = torch.ones(passes, dtype=torch.bool)
    cond = {"ref": ref, "audio": torch.zeros(passes, f, cfg.audio_dim)}
    speech = np.random.default_rng(0).standard_normal(frames * SAMPLES_PER_FRAME)
    speech = speech.astype(np.float32) * 0.1
    latent = torch.randn(1, cfg.latent_channels, f, side, side, generator=g)
    pixels = torch.zeros(1, 3, 1, pipe.size, pipe.size)
    portrait = md.vae.reference(pixels[:, :, 0].to(md.dtype))  # a refiner's, as sessions do
    return {
        "dit": count_flops(lambda: md.velocity(x, t, keep, keep, cond)),
        "speech": count_flops(lambda: speech_call(md, speech, frames)),
        "decode": count_flops(
            lambda: list(md.vae.iter_decode(latent.to(md.dtype), reference=portrait))
        )
        / frames,
        "encode": count_flops(lambda: md.encode(pixels)),
    }


def speech_call(md: Any, speech: np.ndarray, frames: int) -> torch.Tensor:
    """What one "speech" stage entry of a session computes: a clip window's codes, or with
    per-latent codes (the rolling schedule) one latent's, from its own short window."""
    if md.speech_window is None:
        return window_codes(md.speechae, md.front_end, speech, 0, frames)
    return latent_codes(md.speechae, md.front_end, speech, [1], md.speech_window)


def _units(stage: str, result: Any, times: dict) -> float:
    """How many of ``stage_flops``'s units the run did."""
    if stage == "dit":
        return result.clips * result.settings.steps
    if stage == "decode":
        return result.num_frames
    return times.get(stage, {}).get("calls", 0)


def profile_generation(
    pipe: Any,
    speech: np.ndarray,
    portrait: np.ndarray,
    *,
    settings: Any = None,
    startup_seconds: float | None = None,
    unit_flops: dict[str, float] | None = None,
    peak_budget_s: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``speech`` with ``portrait`` into a temporary mp4 and account for the time
    (module docstring). ``startup_seconds``: what came before (the interpreter, the imports,
    building ``pipe``), added for the end-to-end real-time factor. ``unit_flops``: the
    stages' FLOPs per unit when ``pipe``'s networks cannot be counted (onnxruntime): those of
    the same model in torch. Returns a JSON-ready dict."""
    st = pipe.settings(settings)
    with tempfile.TemporaryDirectory() as tmp:
        res = pipe.generate_to_file(portrait, speech, Path(tmp) / "out.mp4", st, progress=progress)
    times = res.times
    unit = stage_flops(pipe, st) if unit_flops is None else unit_flops
    peaks = {
        name: matmul_peak(dtype, pipe.device, budget_s=peak_budget_s)["gflops"]
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    rows = []
    for stage in STAGES:
        if stage not in times:
            continue
        sec = times[stage]["seconds"]
        gflop = unit.get(stage, 0.0) * _units(stage, res, times) / 1e9
        rate = gflop / sec if sec > 0 else 0.0
        rows.append({
            "stage": stage, "seconds": sec, "share": sec / res.seconds,
            "calls": times[stage]["calls"], "gflop": gflop, "gflops": rate,
            "fp32_peak_fraction": rate / peaks["fp32"], "bf16_peak_fraction": rate / peaks["bf16"],
        })  # fmt: skip
    steps = res.clips * st.steps
    passes = st.guidance_config().passes
    dit_s = times.get("dit", {}).get("seconds", 0.0)
    total_gflop = sum(r["gflop"] for r in rows)
    before = startup_seconds
    return {
        "processor": processor_name(pipe.device),
        "threads": torch.get_num_threads(),
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "audio_seconds": res.audio_duration,
        "frames": res.num_frames,
        "clips": res.clips,
        "steps": st.steps,
        "passes": passes,
        "clip_frames": st.clip_frames,
        "generation_seconds": res.seconds,
        "rtf_generation": res.realtime_factor,
        "startup_seconds": before,
        "rtf_end_to_end": None if before is None else (before + res.seconds) / res.audio_duration,
        "dit_step_seconds": dit_s / max(steps, 1),
        "dit_pass_seconds": dit_s / max(steps * passes, 1),
        "unit_gflop": {k: v / 1e9 for k, v in unit.items()},
        "peak_gflops": peaks,
        "total_gflop": total_gflop,
        "gflop_per_video_second": total_gflop / res.audio_duration,
        "rtf_floor_fp32": total_gflop / peaks["fp32"] / res.audio_duration,
        "rtf_floor_bf16": total_gflop / peaks["bf16"] / res.audio_duration,
        "stages": rows,
        "other_seconds": res.seconds - sum(r["seconds"] for r in rows),
    }


def profile_table(r: dict[str, Any]) -> str:
    """The profile as text: one row per stage, then the totals and the floor."""
    lines = [
        f"readtalk bench speed --profile | {r['processor']} | {r['threads']} threads | "
        f"{r['dtype']}",
        f"  {r['audio_seconds']:.1f} s of speech, {r['frames']} frames, {r['clips']} clips x "
        f"{r['steps']} steps x {r['passes']} guidance passes ({r['clip_frames']}-frame clips)",
        f"  matmul peak measured now: fp32 {r['peak_gflops']['fp32']:.1f} GFLOP/s, "
        f"bf16 {r['peak_gflops']['bf16']:.1f} GFLOP/s",
        "",
        f"  {'stage':8s} {'seconds':>8s} {'share':>6s} {'calls':>6s} {'GFLOP':>8s} "
        f"{'GFLOP/s':>8s} {'% fp32':>7s} {'% bf16':>7s}",
    ]
    for s in r["stages"]:
        flops = s["gflop"] > 0
        lines.append(
            f"  {s['stage']:8s} {s['seconds']:8.2f} {100 * s['share']:5.1f}% {s['calls']:6d} "
            + (
                f"{s['gflop']:8.1f} {s['gflops']:8.1f} {100 * s['fp32_peak_fraction']:6.1f}% "
                f"{100 * s['bf16_peak_fraction']:6.1f}%"
                if flops
                else f"{'-':>8s} {'-':>8s} {'-':>7s} {'-':>7s}"
            )
        )
    lines.append(f"  {'other':8s} {r['other_seconds']:8.2f}")
    lines += [
        "",
        f"  DiT: {1000 * r['dit_step_seconds']:.0f} ms per step, "
        f"{1000 * r['dit_pass_seconds']:.0f} ms per guidance pass "
        f"({r['unit_gflop']['dit'] / r['passes']:.2f} GFLOP per pass)",
        f"  generation {r['generation_seconds']:.2f} s: real-time factor {r['rtf_generation']:.3f}",
    ]
    if r["rtf_end_to_end"] is not None:
        lines.append(
            f"  end to end with {r['startup_seconds']:.2f} s of start-up (interpreter, imports, "
            f"loading): real-time factor {r['rtf_end_to_end']:.3f}"
        )
    lines.append(
        f"  work: {r['total_gflop']:.0f} GFLOP, {r['gflop_per_video_second']:.1f} GFLOP per "
        f"second of video; at the measured peak that is a real-time factor of "
        f"{r['rtf_floor_fp32']:.3f} in fp32, {r['rtf_floor_bf16']:.3f} in bf16 (the floor)"
    )
    return "\n".join(lines)


def speech_and_portrait(
    pipe: Any, seconds: float, audio: str | None, image: str | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The profile's inputs: a speech file or ``seconds`` of espeak-ng speech, and a portrait
    file or a new SynthTalk identity."""
    speech = pipe.prepare_audio(audio) if audio else speech_for(seconds, seed=seed)
    portrait = pipe.prepare_image(image) if image else demo_portrait(pipe.size, seed)
    return speech, portrait


def timed_load(load: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    pipe = load()
    return pipe, time.perf_counter() - t0


def profile_runs(
    model: str | None,
    *,
    runtime: str = "torch",
    seconds: float = 60.0,
    audio: str | None = None,
    image: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    overrides: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Profile ``model`` (default: the demo model) with ``runtime``; with ``"onnx"`` the same
    folder's torch model is profiled first, on the same speech and portrait, so that the two
    compare in one process (the ONNX run's FLOPs are the torch model's: the same work).
    Returns ``{"runs": [profile, ...], "text": report}``."""
    runtimes = ["torch"] if runtime == "torch" else ["torch", "onnx"]
    runs, texts = [], []
    speech = portrait = unit = None
    for rt in runtimes:
        pipe, load_s = timed_load(
            lambda rt=rt: Pipeline.from_pretrained(model, device=device, dtype=dtype, runtime=rt)
        )
        age = process_age() if rt == runtimes[0] else None
        startup = load_s if age is None else age  # a second model's start-up is its loading
        if speech is None:
            speech, portrait = speech_and_portrait(pipe, seconds, audio, image, seed)
        st = pipe.settings(**(overrides or {}))
        r = profile_generation(
            pipe, speech, portrait, settings=st, startup_seconds=startup, progress=progress,
            unit_flops=unit,
        )  # fmt: skip
        unit = {k: v * 1e9 for k, v in r["unit_gflop"].items()}
        r["runtime"] = rt
        runs.append(r)
        texts.append(f"[runtime {rt}]\n" + profile_table(r))
    if len(runs) == 2:
        b, a = runs  # torch, onnx
        texts.append(
            f"onnx / torch generation time: {a['generation_seconds'] / b['generation_seconds']:.3f}"
            f" (DiT {a['dit_step_seconds'] / b['dit_step_seconds']:.3f}, decode "
            f"{_stage(a, 'decode') / max(_stage(b, 'decode'), 1e-9):.3f})"
        )
    return {"runs": runs, "text": "\n\n".join(texts)}


def _stage(r: dict[str, Any], name: str) -> float:
    return next((s["seconds"] for s in r["stages"] if s["stage"] == name), 0.0)
