"""``readtalk bench gpu``: the paper-scale speed check for a lent GPU, in one call.

A GPU is lent for minutes, so this is one prepared run that measures, cheapest first and
under a time budget, on random weights: the ``paper`` DiT (1.95 B parameters), 512 px,
121-frame clips, 8 Euler steps of Split-CFG (3 passes batched into one batch-3 call), the VAE
preset whose channels match the DiT's (``ltx``) and Whisper-tiny (packaged weights if
installed, else a random-weight Whisper-tiny: the same network and work). The ``variants``
of ``bench_gpu.json``, in the order they run (docs/speed.md, "GPU: the prepared check"):

* ``matmul_*``: n^3 matrix products (n = 8192 on CUDA), bf16 / TF32 / fp32; bf16 is the *peak*;
* ``speech``: front end + SpeechAE over the clip's audio;
* ``forward_*``: one DiT call on the Split-CFG batch in fp32 (TF32 on CUDA), bf16 autocast
  (fp32 weights), bf16 weights with SDPA's choice or forced flash / efficient / math;
* ``clip_*``: one clip (``steps`` x one batched Split-CFG call, one motion latent, as
  ``readtalk bench speed``), bf16: eager; the DiT captured as one CUDA graph; the blocks
  ``torch.compile``d (regional: one graph for all blocks; ``compile_s`` timed apart); both;
* ``vae_decode``: the clip's latents at once, and the first ``iter_decode`` run;
* ``session_first_frame[_best]``: the real ``Session`` (eager / fastest DiT) fed one clip's
  audio: the wall time of the ``push`` that completes it, i.e. from the clip's audio being
  complete to its frames on the host (speech + sampling + decode; ``push`` returns a clip's
  frames together). ``first_frame_parts_s`` (summary) is the *sum* speech + fastest clip +
  first decoded run: what a session handing out decoded runs at once would reach;
* ``two_clips``: two clips in a row (the second after the first's last latent).

Derived numbers (FLOP floor, fraction of peak, ratio to READ, fps): ``bench_gpu_report``. A
failing variant is recorded with its one-line error and traceback, and the run goes on;
CUDA-only ones say ``skipped (no CUDA)`` on a CPU, those whose estimated cost exceeds the
budget left ``skipped (budget)``. Both files are rewritten after every variant.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import platform
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from readtalk import bench_gpu_report as report
from readtalk.bench import (
    _Inputs,
    _Models,
    _random_inputs,
    _random_models,
    _Setup,
    _setup,
    _sync,
    _time_speech,
    _time_vae_decode,
    _timed,
    dit_flops,
    processor_name,
)
from readtalk.device import resolve_device
from readtalk.diffusion import ans_sample, timestep_schedule
from readtalk.dit.model import num_params
from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLES_PER_FRAME
from readtalk.session import GenerationModels, Session
from readtalk.settings import GenerationSettings
from readtalk.speech.frontend import WhisperFrontEnd, load_front_end
from readtalk.speech.speechae import window_codes
from readtalk.speech.whisper import WhisperConfig, WhisperEncoder, default_whisper_path

__all__ = ["run_gpu_bench"]

COMPILE_GUESS_S = 60.0  # budget set aside for compiling one DiT block (CUDA, Inductor)

DiTFn = Callable[..., Tensor]  # the DiT's signature: (x, t, ref, audio, ref_mask, audio_mask)


# ------------------------------------------------------------------------------ the run record


@dataclasses.dataclass
class _Run:
    """The run's clock, its results so far and where they are written."""

    device: torch.device
    budget_s: float
    out: Path
    result: dict[str, Any]
    log: Callable[[str], None]
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def ok(self, name: str) -> bool:
        return self.result["variants"].get(name, {}).get("status") == "ok"

    def value(self, name: str, key: str = "seconds") -> float | None:
        return self.result["variants"][name].get(key) if self.ok(name) else None

    def save(self) -> None:
        self.result["elapsed_s"] = time.perf_counter() - self.t0
        self.result["summary"] = report.summary(self.result)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "bench_gpu.json").write_text(json.dumps(self.result, indent=2) + "\n")
        (self.out / "bench_gpu.md").write_text(report.markdown(self.result))

    def measure(
        self, name: str, what: str, fn: Callable[[], dict[str, Any]], *,
        cuda_only: bool = False, cost_s: float = 0.0, needs: tuple[str, ...] = (),
    ) -> dict[str, Any] | None:  # fmt: skip
        """Run one measurement ``fn`` (returns its numbers) unless it cannot or may not run;
        record its status, save, and return the record when it succeeded."""
        rec: dict[str, Any] = {"what": what}
        cuda = self.device.type == "cuda"
        missing = [n for n in needs if not self.ok(n)]
        if cuda_only and not cuda:
            rec["status"] = "skipped (no CUDA)"
        elif missing:
            rec["status"] = f"skipped (needs {', '.join(missing)})"
        elif self.left() <= cost_s:
            rec.update(status="skipped (budget)", estimated_s=cost_s)
        else:
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            t0 = time.perf_counter()
            try:
                rec.update(fn())
                rec["status"] = "ok"
            except Exception as e:  # one failing variant must not end the run
                first = (str(e).strip().splitlines() or [""])[0]
                rec.update(status="error", error=f"{type(e).__name__}: {first}"[:400])
                rec["traceback"] = traceback.format_exc()[-3000:]
                _recover(self.device)
            rec["wall_s"] = time.perf_counter() - t0
            if cuda:
                rec["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.result["variants"][name] = rec
        self.save()
        shown = f"{report.fmt_s(rec.get('seconds'))}  {rec.get('error', '')}"
        self.log(f"  {name:<28}{rec['status']:<20}{shown}".rstrip())
        return rec if rec["status"] == "ok" else None


def _recover(device: torch.device) -> None:
    """After a failed variant: free what it held (an out-of-memory leaves a full cache)."""
    gc.collect()
    if device.type == "cuda":
        with suppress(Exception):  # a sticky CUDA error: the next variants will record it too
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------- pieces


@torch.no_grad()
def _matmul_rate(n: int, dtype: torch.dtype, device: torch.device, iters: int, repeats: int):
    """FLOP/s of back-to-back n x n x n products (2 n^3 FLOPs each), best of ``repeats``."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)

    def run() -> Tensor:
        for _ in range(iters):
            torch.mm(a, b, out=c)
        return c

    t, _ = _timed(run, device, repeats)
    rate = 2.0 * n**3 * iters / t
    return {"seconds": t / iters, "n": n, "flops_per_s": rate, "derived": report.fmt_rate(rate)}


def _front_end(kind: str, device: torch.device) -> tuple[Any, str]:
    """Whisper-tiny (packaged weights, or random ones: same network and work) or log-mel, and
    its label."""
    if kind in ("auto", "whisper") and default_whisper_path() is None:
        fe = WhisperFrontEnd(WhisperEncoder(WhisperConfig()), device=device)
        return fe, f"{fe.name} (random weights)"
    fe = load_front_end("logmel" if kind == "logmel" else "whisper", None, device=device)
    return fe, fe.name


def _split_cfg_args(inputs: _Inputs, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The DiT's arguments for one Split-CFG call: the batch of 3 ``[uncond ; ref ; full]``."""
    dev = inputs.latents.device

    def rep(x: Tensor) -> Tensor:
        return torch.cat([x] * report.PASSES).to(dtype)

    ref_mask = torch.tensor([False, True, True], device=dev)
    audio_mask = torch.tensor([False, False, True], device=dev)
    t = torch.cat([inputs.t] * report.PASSES)  # timesteps stay float32, as the sampler passes them
    return rep(inputs.latents), t, rep(inputs.ref), rep(inputs.codes), ref_mask, audio_mask


def _sample(model: DiTFn, inputs: _Inputs, s: _Setup, motion: Tensor | None) -> Tensor:
    """One clip: ``s.steps`` Euler steps of ANS sampling with Split-CFG after ``motion`` (None:
    a first clip; the same work), as ``bench._time_dit``'s clip, with any callable of the DiT's
    signature."""
    dt = s.dtype

    def model_fn(z, tt, rm, am, cond):
        return model(z.to(dt), tt, cond["ref"].to(dt), cond["audio"].to(dt), rm, am)

    x = inputs.latents
    noise = torch.randn(*x.shape, generator=inputs.generator, device=x.device)
    cond = {"ref": inputs.ref, "audio": inputs.codes}
    schedule = timestep_schedule(s.steps)
    return ans_sample(model_fn, noise, schedule, motion=motion, cond=cond, guidance=s.guidance)


class _GraphedDiT:
    """The DiT's forward at one input shape, captured once as a CUDA graph and replayed; each
    call copies its arguments into the captured input buffers (PyTorch's documented
    whole-network capture: warm-up on a side stream, then ``torch.cuda.graph``)."""

    def __init__(self, model: DiTFn, example: tuple[Tensor, ...]) -> None:
        self.inputs = tuple(x.clone() for x in example)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                model(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = model(*self.inputs)

    def __call__(self, *args: Tensor) -> Tensor:
        for dst, src in zip(self.inputs, args, strict=True):
            if dst.shape != src.shape:
                raise ReadtalkError(f"graphed DiT captured {tuple(dst.shape)}, got {src.shape}")
            dst.copy_(src)
        self.graph.replay()
        return self.output.clone()


class _CompiledBlocks:
    """The DiT with its blocks swapped for ``torch.compile``d ones during each call
    (regional compilation: all blocks run one compiled graph; the model is left as it was)."""

    def __init__(self, dit: torch.nn.Module, mode: str, backend: str = "inductor") -> None:
        self.dit = dit
        compiled = (torch.compile(b, mode=mode, backend=backend, dynamic=False) for b in dit.blocks)
        self.blocks = torch.nn.ModuleList(compiled)

    def __call__(self, *args: Tensor) -> Tensor:
        eager = self.dit.blocks
        self.dit.blocks = self.blocks
        try:
            return self.dit(*args)
        finally:
            self.dit.blocks = eager


def _dynamo_graphs() -> int | None:
    """Graphs Dynamo has compiled in this process (1 when all blocks share one), if known."""
    try:  # a private counter; torch.compile has loaded torch._dynamo by now
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    except Exception:
        return None


def _clip_numbers(t: float, run: _Run) -> dict[str, Any]:
    floor, ratio = report.flop_floor(run.result), t / report.READ_A100_CLIP_S
    share = "" if floor is None else f"; {100 * floor / t:.0f}% of bf16 peak"
    derived = f"{ratio:.2f}x READ's {report.READ_A100_CLIP_S} s (A100){share}"
    frac = None if floor is None else floor / t
    return {"seconds": t, "vs_read_a100": ratio, "fraction_of_bf16_peak": frac, "derived": derived}


@torch.no_grad()
def _session_first_frame(models: _Models, fe: Any, dit: DiTFn, s: _Setup, runs: int):
    """The push that completes the first clip's audio in a real ``Session`` (module
    docstring); cold (first session) and best of ``runs`` sessions."""
    gm = GenerationModels(
        vae=models.vae, speechae=models.speechae, front_end=fe, dit=dit,  # type: ignore[arg-type]
        latent_mean=None, latent_std=None, device=s.device, dtype=s.dtype,
    )  # fmt: skip
    settings = GenerationSettings(steps=s.steps, clip_frames=s.clip_frames, guidance="split")
    portrait = np.random.default_rng(0).integers(0, 256, (s.res, s.res, 3), dtype=np.uint8)
    audio = 0.1 * np.random.default_rng(1).standard_normal(s.clip_frames * SAMPLES_PER_FRAME)
    audio = audio.astype(np.float32)
    last = SAMPLES_PER_FRAME // 2  # the final 20 ms of the clip's audio
    times, frames = [], 0
    for _ in range(runs):
        session = Session(gm, portrait, settings)
        if session.push(audio[:-last]):
            raise ReadtalkError("the session made frames before the clip's audio was complete")
        _sync(s.device)
        t0 = time.perf_counter()
        out = session.push(audio[-last:])
        times.append(time.perf_counter() - t0)
        frames = len(out)
        session.close()
    derived = f"{frames} frames at once; cold {report.fmt_s(times[0])}"
    return {"seconds": min(times), "cold_s": times[0], "frames": frames, "derived": derived}


@torch.no_grad()
def _two_clips(models: _Models, fe: Any, dit: DiTFn, inputs: _Inputs, s: _Setup):
    """Speech, sampling and decoding of two clips in a row (the second after the first's
    last latent); frames per second over the new frames of both."""
    _sync(s.device)
    t0 = time.perf_counter()
    motion = None
    for _ in range(2):
        window_codes(models.speechae, fe, inputs.audio, 0, s.clip_frames)
        lat = _sample(dit, inputs, s, motion)  # the first clip has no motion latent
        models.vae.decode(lat.to(s.dtype))
        motion = lat[:, :, -1:]
    _sync(s.device)
    t = time.perf_counter() - t0
    frames = 2 * s.clip_frames - 1  # the second clip's first frame repeats the first's last
    return {"seconds": t, "frames": frames, "fps": frames / t, "derived": f"{frames / t:.1f} fps"}


# ----------------------------------------------------------------------------- the summary


# ------------------------------------------------------------------------------------ runner


def _environment(dev: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": processor_name(dev), "device_type": dev.type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    if dev.type == "cuda":
        p, be = torch.cuda.get_device_properties(dev), torch.backends
        env.update(
            capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
            memory_gib=p.total_memory / 2**30, cudnn=be.cudnn.version(),
            flash_sdp_enabled=be.cuda.flash_sdp_enabled(),
            mem_efficient_sdp_enabled=be.cuda.mem_efficient_sdp_enabled(),
            math_sdp_enabled=be.cuda.math_sdp_enabled(),
        )  # fmt: skip
    return env


def run_gpu_bench(
    size: str = "paper", res: int = 512, *, clip_frames: int = 121, steps: int = 8,
    budget_s: float = 420.0, out: str | Path = "bench-gpu", device: str = "auto",
    repeats: int = 3, front_end: str = "auto", compile_mode: str = "default",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Run the GPU check (module docstring); writes ``out/bench_gpu.json`` and
    ``out/bench_gpu.md``, prints the table through ``log`` and returns the JSON's content."""
    dev = resolve_device(device)
    if size == "paper" and dev.type != "cuda":
        raise ReadtalkError(
            "the paper-size DiT is for CUDA; on a CPU try --size debug --res 64 "
            "--clip-frames 17 --steps 2"
        )
    if repeats < 1:
        raise ReadtalkError(f"--repeats must be >= 1, got {repeats}")
    s32 = _setup(size, res, None, steps, "split", clip_frames, str(dev), "float32")
    s16 = dataclasses.replace(s32, dtype=torch.bfloat16)
    c, f, h, w = s32.latent_shape
    flops, passes = dit_flops(s32.dit, f, h, w)["total"], report.PASSES
    result: dict[str, Any] = {
        "settings": {
            "size": size, "res": res, "clip_frames": clip_frames, "steps": steps,
            "passes": passes, "budget_s": budget_s, "repeats": repeats,
            "compile_mode": compile_mode, "vae": s32.vae.name, "front_end": front_end,
            "dit_params": num_params(s32.dit), "latents": [c, f, h, w],
            "tokens": (1 + f) * h * w, "weights": "random",
        },
        "environment": _environment(dev),
        "flops": {"forward": flops, "call": passes * flops, "clip": passes * steps * flops},
        "variants": {},
    }  # fmt: skip
    run = _Run(dev, budget_s, Path(out), result, log)
    log(f"bench gpu: {size} DiT, {res} px, {clip_frames} frames, {steps} steps on {dev}")
    precision = torch.get_float32_matmul_precision()
    try:
        _measure_all(run, s32, s16, repeats, front_end, compile_mode)
    finally:
        torch.set_float32_matmul_precision(precision)
    run.save()
    log(report.markdown(result))
    log(f"wrote {run.out / 'bench_gpu.json'} and {run.out / 'bench_gpu.md'}")
    return result


@dataclasses.dataclass
class _Parts:
    """What the measurements share: the random models and inputs, bf16 settings, and the DiT
    callable of each clip variant measured so far."""

    models: _Models
    fe: Any
    inputs: _Inputs
    s16: _Setup
    repeats: int
    dits: dict[str, DiTFn]
    latents: Tensor | None = None  # the eager clip's, for the VAE decode

    @property
    def example(self) -> tuple[Tensor, ...]:
        return _split_cfg_args(self.inputs, torch.bfloat16)


def _measure_all(
    run: _Run, s32: _Setup, s16: _Setup, repeats: int, front_end: str, compile_mode: str
) -> None:
    """Every measurement in order, cheapest first (module docstring)."""
    _measure_matmuls(run, repeats)
    parts: list[_Parts] = []

    def setup() -> dict[str, Any]:
        fe, label = _front_end(front_end, run.device)
        with torch.device(run.device):  # initialise on the device: 2 B parameters are slow on a CPU
            models = _random_models(s32, fe, factorised=False)
        parts.append(_Parts(models, fe, _random_inputs(s32), s16, repeats, {}))
        run.result["settings"]["front_end"] = label
        return {"derived": f"front end {label}"}

    if not run.measure("setup", "random-weight models built on the device", setup):
        return
    p = parts[0]
    run.measure(
        "speech", "front end + SpeechAE over the clip's audio",
        lambda: {"seconds": _time_speech(p.models.speechae, p.fe, p.inputs.audio, s32, repeats)},
    )  # fmt: skip
    _measure_forwards(run, p)
    _measure_clips(run, p, compile_mode)
    _measure_live(run, p)


def _measure_matmuls(run: _Run, repeats: int) -> None:
    cuda = run.device.type == "cuda"
    n = 8192 if cuda else 256
    for name, dtype, precision, iters in (
        ("matmul_bf16", torch.bfloat16, "highest", 20 if cuda else 2),
        ("matmul_tf32", torch.float32, "high", 10),
        ("matmul_fp32", torch.float32, "highest", 4 if cuda else 2),
    ):
        torch.set_float32_matmul_precision(precision)
        run.measure(
            name, f"{n}^3 matrix product, {name.split('_')[1]}",
            lambda dtype=dtype, iters=iters: _matmul_rate(n, dtype, run.device, iters, repeats),
            cuda_only=name == "matmul_tf32",
        )  # fmt: skip
    torch.set_float32_matmul_precision("high")  # TF32 for the fp32 forward (CUDA only)


def _measure_forwards(run: _Run, p: _Parts) -> None:
    """One DiT call on the Split-CFG batch: fp32, bf16 autocast, then (the models cast to bf16
    for good) bf16 weights with each SDPA backend."""
    dev, dit = run.device, p.models.dit

    def forward(args: tuple[Tensor, ...], autocast: bool = False, backend=None):
        def call() -> Tensor:
            kernel = nullcontext() if backend is None else sdpa_kernel(backend)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast), kernel:
                return dit(*args)

        def measure() -> dict[str, Any]:
            with torch.no_grad():
                t, _ = _timed(call, dev, p.repeats)
            rate = run.result["flops"]["call"] / t
            peak = run.value("matmul_bf16", "flops_per_s")
            share = "" if peak is None else f"; {100 * rate / peak:.0f}% of bf16 peak"
            return {"seconds": t, "flops_per_s": rate, "derived": report.fmt_rate(rate) + share}

        return measure

    what = "DiT call, Split-CFG batch 3"
    tf32 = ", TF32 matmuls" if dev.type == "cuda" else ""
    args = _split_cfg_args(p.inputs, torch.float32)
    run.measure("forward_fp32", f"{what}, fp32 weights{tf32}", forward(args))
    cost = (p.repeats + 1) * (run.value("forward_fp32") or 0.0)
    run.measure(
        "forward_bf16_autocast", f"{what}, fp32 weights, bf16 autocast",
        forward(args, autocast=True), cost_s=cost,
    )  # fmt: skip
    del args
    p.models.dit.to(torch.bfloat16)  # bf16 weights from here on, the VAE's too
    p.models.vae.to(torch.bfloat16)
    _recover(dev)
    args = p.example
    run.measure("forward_bf16", f"{what}, bf16 weights, SDPA's choice", forward(args))
    kernels = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for label, backend in {**kernels, "math": SDPBackend.MATH}.items():
        run.measure(
            f"forward_bf16_{label}", f"{what}, bf16 weights, SDPA {label}",
            forward(args, backend=backend), cuda_only=label != "math",
            cost_s=(p.repeats + 1) * (run.value("forward_bf16") or 0.0),
        )  # fmt: skip


def _measure_clips(run: _Run, p: _Parts, compile_mode: str) -> None:
    """One clip per DiT variant (eager, CUDA graph, compiled, compiled + graph), the VAE decode
    and, between them, the eager session's first frame (it needs no compilation)."""
    dev, dit, s16 = run.device, p.models.dit, p.s16
    motion = p.inputs.latents[:, :, :1]  # a later clip, as ``readtalk bench speed`` times it
    fwd = run.value("forward_bf16") or 0.0

    def clip(model: DiTFn) -> dict[str, Any]:
        with torch.no_grad():
            t, lat = _timed(lambda: _sample(model, p.inputs, s16, motion), dev, 1)
        if p.latents is None:
            p.latents = lat
        return _clip_numbers(t, run)

    what = f"{s16.steps} steps x 1 Split-CFG call (batch 3), bf16"
    p.dits["clip_eager"] = dit
    run.measure("clip_eager", f"{what}, eager", lambda: clip(dit), cost_s=2 * s16.steps * fwd)
    clip_s = run.value("clip_eager") or 2 * s16.steps * fwd

    def decode() -> dict[str, Any]:
        lat = (p.inputs.latents if p.latents is None else p.latents).to(torch.bfloat16)
        t = _time_vae_decode(p.models.vae, lat, s16)
        with torch.no_grad():
            t_first, _ = _timed(lambda: next(iter(p.models.vae.iter_decode(lat))), dev, 1)
        derived = f"first run {report.fmt_s(t_first)}"
        return {"seconds": t, "first_run_s": t_first, "derived": derived}

    run.measure("vae_decode", f"{s16.vae.name} VAE, the clip's latents, bf16", decode)

    def graphed(source: str, name: str) -> Callable[[], dict[str, Any]]:
        def measure() -> dict[str, Any]:
            with torch.no_grad():
                p.dits[name] = _GraphedDiT(p.dits[source], p.example)
            return clip(p.dits[name])

        return measure

    run.measure(
        "clip_cuda_graph", f"{what}, eager DiT captured as one CUDA graph",
        graphed("clip_eager", "clip_cuda_graph"), cuda_only=True,
        cost_s=2 * clip_s + 3 * fwd, needs=("clip_eager",),
    )  # fmt: skip
    _measure_session(run, p, "session_first_frame", "clip_eager")

    def compiled() -> dict[str, Any]:
        model = _CompiledBlocks(dit, compile_mode)
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(*p.example)  # compiles
        _sync(dev)
        warm = time.perf_counter() - t0
        p.dits["clip_compile"] = model
        return {**clip(model), "compile_s": warm, "dynamo_graphs": _dynamo_graphs()}

    run.measure(
        "clip_compile", f"{what}, torch.compile'd blocks (mode {compile_mode})", compiled,
        cuda_only=True, cost_s=COMPILE_GUESS_S + 2 * clip_s, needs=("clip_eager",),
    )  # fmt: skip
    run.measure(
        "clip_compile_cuda_graph", f"{what}, compiled blocks in one CUDA graph",
        graphed("clip_compile", "clip_compile_cuda_graph"), cuda_only=True,
        cost_s=2 * clip_s + 3 * fwd, needs=("clip_compile",),
    )  # fmt: skip


def _e2e_estimate(run: _Run) -> float:
    return sum(run.value(n) or 0.0 for n in ("clip_eager", "vae_decode", "speech"))


def _measure_session(run: _Run, p: _Parts, name: str, variant: str | None) -> None:
    what = "real Session: push completing the clip's audio -> its frames"
    if name != "session_first_frame" and variant in (None, "clip_eager"):
        run.result["variants"][name] = {
            "what": f"{what}, DiT of the fastest clip variant",
            "status": f"skipped (fastest clip: {variant or 'none'})",
        }
        return
    runs = min(max(2, p.repeats), 3)
    run.measure(
        name, f"{what}, DiT of {variant}",
        lambda: _session_first_frame(p.models, p.fe, p.dits[variant], p.s16, runs),
        cost_s=runs * _e2e_estimate(run), needs=(variant,),
    )  # fmt: skip


def _measure_live(run: _Run, p: _Parts) -> None:
    """With the fastest clip variant: the session's first frame and two clips in a row."""
    best = run.result["summary"]["best_clip_variant"]
    _measure_session(run, p, "session_first_frame_best", best)
    run.measure(
        "two_clips", f"2 clips in a row (speech, sampling, decode), DiT of {best}",
        lambda: _two_clips(p.models, p.fe, p.dits[best], p.inputs, p.s16),
        cost_s=3 * _e2e_estimate(run), needs=("vae_decode", "speech", best or "clip_eager"),
    )  # fmt: skip
