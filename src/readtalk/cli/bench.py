"""``readtalk bench synth | speed | results``: speed benchmarks and READ's tables."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from readtalk.cli.common import (
    add_dtype_arg,
    add_model_args,
    add_settings_args,
    load_pipeline,
    model_or_demo,
    set_threads,
    settings_overrides,
)
from readtalk.cli.data import add_synth_args, synth_config
from readtalk.errors import ReadtalkError

# readtalk.eval.results.TABLES, spelt out so that `readtalk --help` stays instant
# (tests/test_layers.py checks they agree)
RESULT_TABLES = ("main", "grid", "ans", "ablations")


def cmd_bench_synth(a: argparse.Namespace) -> None:
    from readtalk.data.synthtalk import generate

    cfg = synth_config(a)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate(cfg, Path(tmp) / "bench", progress=not a.quiet)
        dt = time.perf_counter() - t0
    cps = cfg.clips / dt
    fps = cps * cfg.frames
    video_s = cfg.clips * cfg.duration
    print(
        f"synthtalk bench: {cfg.clips} clips x {cfg.frames} frames at {cfg.size}px, "
        f"workers={cfg.workers or 'all'}"
    )
    print(
        f"  wall {dt:.2f} s | {cps:.3f} clips/s | {fps:.1f} frames/s | "
        f"{video_s / dt:.2f}x real time"
    )
    print(f"  1,000 clips would take {1000 / cps / 60:.1f} min")


def configure_speed_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``readtalk bench speed``."""
    p.add_argument("--size", default="small", help="DiT size: debug, tiny, small, base, paper")
    p.add_argument("--res", type=int, default=256, help="frame size in pixels (multiple of 32)")
    p.add_argument(
        "--vae-preset", default=None, help="VAE preset (default: the one with the DiT's channels)"
    )
    p.add_argument(
        "--factorised",
        action="store_true",
        help="time a factorised VAE (the preset's frame path + packer) instead of the video VAE",
    )
    p.add_argument("--steps", type=int, default=None, help="Euler steps (8; --profile: model's)")
    p.add_argument("--cfg", choices=("split", "joint", "none"), default=None, help="(split)")
    p.add_argument(
        "--clip-frames",
        type=int,
        default=None,
        help="frames per clip, 8k+1 (121; --profile: model's)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    add_dtype_arg(p)
    p.add_argument(
        "--front-end",
        choices=("auto", "whisper", "logmel"),
        default="auto",
        help="speech front end (auto: whisper if its weights are installed)",
    )
    p.add_argument("--whisper", default=None, help="Whisper-tiny weights (default: packaged)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--repeats", type=int, default=3, help="best of N for the short timings")
    p.add_argument(
        "--flops-only", action="store_true", help="print the DiT's FLOPs without running it"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group(
        "--profile", "a real generation with a trained model, accounted stage by stage"
    )
    g.add_argument(
        "--profile",
        action="store_true",
        help="generate with --model (default: the demo model) and print seconds, FLOPs and "
        "the fraction of this machine's measured fp32 / bf16 matmul peak per stage",
    )
    g.add_argument("--model", default=None, help="model folder (default: the demo model)")
    g.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: --model is a folder of `readtalk export --format onnx`; its torch model is "
        "profiled in the same run for comparison",
    )
    g.add_argument("--seconds", type=float, default=60.0, help="espeak-ng speech to generate")
    g.add_argument("--audio", help="speech file instead of espeak-ng speech")
    g.add_argument("--image", help="portrait (default: a new SynthTalk identity)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", help="also write the figures to this JSON file")


def cmd_bench_speed(a: argparse.Namespace) -> None:
    """``readtalk bench speed``."""
    from readtalk.bench import flops_report, run_speed

    set_threads(a.threads)
    if a.profile:
        return cmd_bench_profile(a)
    steps, cfg, frames = a.steps or 8, a.cfg or "split", a.clip_frames or 121
    if a.flops_only:
        print(flops_report(a.size, a.res, frames, steps, cfg))
        return
    run_speed(
        a.size, a.res, vae_preset=a.vae_preset, steps=steps, cfg=cfg,
        clip_frames=frames, device=a.device, dtype=a.dtype, front_end=a.front_end,
        whisper=a.whisper, repeats=a.repeats, factorised=a.factorised,
    )  # fmt: skip


def cmd_bench_profile(a: argparse.Namespace) -> None:
    """``readtalk bench speed --profile``."""
    from readtalk.bench_profile import profile_runs

    overrides = {
        k: v
        for k, v in (("steps", a.steps), ("guidance", a.cfg), ("clip_frames", a.clip_frames))
        if v is not None
    }
    # --runtime onnx needs an exported folder: without --model, profile_runs says so
    model = model_or_demo(a.model) if a.runtime == "torch" else a.model
    report = profile_runs(
        model, runtime=a.runtime, seconds=a.seconds, audio=a.audio, image=a.image,
        seed=a.seed, device=a.device, dtype=a.dtype, overrides=overrides, progress=not a.quiet,
    )  # fmt: skip
    print(report["text"])
    if a.json:
        Path(a.json).write_text(json.dumps(report["runs"], indent=2) + "\n")
        print(f"wrote {a.json}")


def cmd_results(a: argparse.Namespace) -> None:
    from readtalk.eval.results import ResultsConfig, run_results

    ablations = {}
    for item in a.ablation or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ReadtalkError(f"--ablation takes name=DIR, got {item!r}")
        ablations[name] = path
    try:
        steps = tuple(int(s) for s in a.steps.split(","))
    except ValueError:
        raise ReadtalkError(f"--steps takes numbers separated by commas, got {a.steps!r}") from None
    tables = tuple(t.strip() for t in a.tables.split(",") if t.strip())
    cfg = ResultsConfig(
        tables=tables,
        clips=a.clips,
        main_steps=a.main_steps,
        grid_clips=a.grid_clips,
        steps=steps,
        syncnet=a.syncnet or "",
        inception=a.inception or "",
        i3d=a.i3d or "",
        device=a.device,
        ablations=ablations,
    )
    run_results(model_or_demo(a.model), a.data, a.out, cfg, long=a.long, progress=not a.quiet)
    print((Path(a.out) / "results.md").read_text())
    print(f"wrote {Path(a.out) / 'results.json'}")


def _add_results(bench_sub) -> None:
    """``readtalk bench results``."""
    p = bench_sub.add_parser("results", help="READ's tables on a dataset's test split")
    p.add_argument("--model", default=None, help="model folder (default: the demo model)")
    p.add_argument(
        "--data", help="dataset with a test split (SynthTalk); all tables but ans need it"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--long", help="dataset of long clips for the ANS table")
    p.add_argument(
        "--tables",
        default=",".join(RESULT_TABLES),
        help=f"tables to compute, comma-separated (default: {','.join(RESULT_TABLES)})",
    )
    p.add_argument("--ablation", action="append", help="name=DIR: another model folder to score")
    p.add_argument("--clips", type=int, default=32, help="test clips in the main table (0: all)")
    p.add_argument("--grid-clips", type=int, default=8, help="clips per steps/guidance cell")
    p.add_argument("--steps", default="4,6,8,10", help="sampling steps to compare")
    p.add_argument(
        "--main-steps",
        type=int,
        default=8,
        help="sampling steps of the main, ANS and ablation rows (READ's 8; 0: the model's own)",
    )
    p.add_argument("--syncnet", help="SyncNet weights")
    p.add_argument("--inception", help="FID Inception weights")
    p.add_argument("--i3d", help="FVD I3D weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_results)


def cmd_bench_stream(a: argparse.Namespace) -> None:
    """``readtalk bench stream``."""
    from readtalk.demo import synth_inputs
    from readtalk.live import bench_stream, speech_for
    from readtalk.media import load_audio

    pipe = load_pipeline(a)
    st = pipe.settings(**settings_overrides(a))
    with tempfile.TemporaryDirectory() as tmp:
        image = a.image or synth_inputs(Path(tmp), pipe.size, a.seed)["image"]
        audio = load_audio(a.audio) if a.audio else speech_for(a.seconds, a.seed)
        rep = bench_stream(
            pipe, image, audio, st, chunk_ms=a.chunk_ms, paced=a.paced,
            buffer_s=a.buffer_ms / 1e3, progress=not a.quiet,
        )  # fmt: skip
    print("\n".join(rep.lines()))
    if a.json:
        Path(a.json).write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
        print(f"wrote {a.json}")


def cmd_bench_serve(a: argparse.Namespace) -> None:
    """``readtalk bench serve``."""
    from readtalk.cli.serve import import_serve

    import_serve()
    from readtalk.serve.loadtest import bench_serve

    settings = {k: v for k, v in (("steps", a.steps), ("clip_frames", a.clip_frames)) if v}
    rep = bench_serve(
        a.streams, a.seconds, url=a.url, token=a.token, model=a.model, chunk_ms=a.chunk_ms,
        stagger_s=a.stagger, settings=settings, batching=a.batching,
    )  # fmt: skip
    print("\n".join(rep.lines()))
    if a.json:
        Path(a.json).write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
        print(f"wrote {a.json}")


def _add_serve(bench) -> None:
    p = bench.add_parser(
        "serve", help="concurrent paced WebSocket streams against a server: fps, latency, RSS"
    )
    p.add_argument("--streams", type=int, default=1, help="concurrent streams")
    p.add_argument("--seconds", type=float, default=30.0, help="speech per stream")
    p.add_argument("--url", help="a running server (default: start one on a free port)")
    p.add_argument("--token", default=None, help="the server's token")
    p.add_argument("--model", default=None, help="model of the server started (default: demo)")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="piece size in milliseconds")
    p.add_argument("--stagger", type=float, default=0.5, help="seconds between stream starts")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: model's)")
    p.add_argument("--clip-frames", type=int, default=None, help="frames per clip, 8k+1")
    p.add_argument(
        "--batching", action="store_true", help="also time one DiT call for 1..N sessions"
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench_serve)


def register(sub) -> None:
    """``readtalk bench BENCH`` on the top-level subparsers."""
    bench = sub.add_parser("bench", help="speed benchmarks").add_subparsers(
        dest="bench", required=True, metavar="BENCH"
    )
    p = bench.add_parser("synth", help="SynthTalk generation speed (clips per second)")
    add_synth_args(p, clips=16)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_synth)
    p = bench.add_parser(
        "speed", help="DiT / VAE / speech timings and FLOPs of one clip (random weights)"
    )
    configure_speed_parser(p)
    p.set_defaults(func=cmd_bench_speed)
    _add_results(bench)
    p = bench.add_parser(
        "stream", help="a live session fed speech in pieces: first-frame latency, lateness"
    )
    p.add_argument("--seconds", type=float, default=60.0, help="espeak-ng speech to feed")
    p.add_argument("--audio", help="feed this speech file instead")
    p.add_argument("--image", help="portrait (default: a new SynthTalk identity)")
    p.add_argument("--paced", action="store_true", help="feed in real time, as a microphone")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="piece size in milliseconds")
    p.add_argument(
        "--buffer-ms",
        type=float,
        default=0.0,
        help="the player starts this long after the first frame is ready (a jitter buffer); "
        "lateness and underruns count from there",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)
    add_settings_args(p)
    p.set_defaults(func=cmd_bench_stream)
    _add_serve(bench)
    from readtalk.cli.bench_gpu import add_gpu  # argparse only: `readtalk --help` stays instant

    add_gpu(bench)
