"""``readtalk bench gpu``: the paper-scale speed check for a lent GPU, in one call."""

from __future__ import annotations

import argparse

from readtalk.cli.common import set_threads


def cmd_bench_gpu(a: argparse.Namespace) -> None:
    """``readtalk bench gpu``."""
    from readtalk.bench_gpu import run_gpu_bench

    set_threads(a.threads)
    run_gpu_bench(
        a.size, a.res, clip_frames=a.clip_frames, steps=a.steps, budget_s=a.budget_s,
        out=a.out, device=a.device, repeats=a.repeats, front_end=a.front_end,
        compile_mode=a.compile_mode,
    )  # fmt: skip


def add_gpu(bench_sub) -> None:
    """Add ``readtalk bench gpu`` to the ``bench`` subparsers."""
    p = bench_sub.add_parser(
        "gpu",
        help="paper-scale GPU check in one call: bf16, SDPA kernels, CUDA graphs, torch.compile, "
        "first frame, fps (random weights; JSON + markdown)",
    )
    p.add_argument("--size", default="paper", help="DiT size (debug for a CPU smoke run)")
    p.add_argument("--res", type=int, default=512, help="frame size in pixels (multiple of 32)")
    p.add_argument("--clip-frames", type=int, default=121, help="frames per clip, 8k+1")
    p.add_argument("--steps", type=int, default=8, help="Euler steps per clip")
    p.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="time budget in seconds; later measurements that would not fit are skipped",
    )
    p.add_argument("--out", default="bench-gpu", help="folder for bench_gpu.json and .md")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--repeats", type=int, default=3, help="best of N for the short timings")
    p.add_argument(
        "--front-end",
        choices=("auto", "whisper", "logmel"),
        default="auto",
        help="speech front end (whisper: packaged weights, else random Whisper-tiny weights)",
    )
    p.add_argument(
        "--compile-mode",
        choices=("default", "max-autotune-no-cudagraphs"),
        default="default",
        help="torch.compile mode of the compiled variants (max-autotune takes minutes)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.set_defaults(func=cmd_bench_gpu)
