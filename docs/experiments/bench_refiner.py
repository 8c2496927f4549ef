"""Time the portrait refiner per frame, its flow network in channels-last memory (as shipped)
against the same network on contiguous (NCHW) activations, in one process, interleaved
(docs/results.md section 9, "Cost").

    .venv/bin/python docs/experiments/bench_refiner.py --threads 2

The shipped demo VAE's refiner on 16 decoded frames of a demo portrait at a time; prints the
minimum and the median over ``--repeats`` calls, in ms per frame; ``--against VAE`` adds
another VAE's whole refiner to the same loop. ``--profile``: also where the whole refiner's
time goes, op by op (``torch.profiler``, ms a frame; ``--frames 8`` is what the rolling decode
hands it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from readtalk.demo import demo_portrait
from readtalk.media import to_tensor
from readtalk.vae.factorised import load_vae
from readtalk.vae.refiner import FLOW_RANGE, Reference, Refiner


def motion_nchw(r: Refiner, y: torch.Tensor, ref: Reference) -> torch.Tensor:
    """``Refiner.motion`` without the channels-last conversion (the previous code)."""
    ys = r.small(y)
    rs = ref.small.expand(ys.shape[0], -1, -1, -1)
    h1 = r.e1(torch.cat([ys, rs, ys - rs], dim=1))
    h2 = r.e2(h1)
    h3 = r.e3(h2)
    u2 = r.d2(torch.cat([F.interpolate(h3, size=h2.shape[2:]), h2], dim=1))
    u1 = r.d1(torch.cat([F.interpolate(u2, size=h1.shape[2:]), h1], dim=1))
    out = r.head(u1)
    return torch.cat([FLOW_RANGE * torch.tanh(out[:, :2]), torch.sigmoid(out[:, 2:])], dim=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", default="src/readtalk/assets/demo/vae.safetensors")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--profile", action="store_true", help="the whole refiner's ops")
    p.add_argument(
        "--against", action="append", default=[], metavar="VAE",
        help="another VAE whose whole refiner is timed in the same loop (repeatable)",
    )  # fmt: skip
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    vae = load_vae(a.vae).eval().float()
    assert vae.refiner is not None, "this VAE has no portrait refiner"
    image = to_tensor(demo_portrait(256, 0)[None])[None][:, :, 0]  # (1, 3, H, W)
    with torch.inference_mode():
        ref = vae.reference(image)
        y = vae.redraw(image).repeat(a.frames, 1, 1, 1)  # decoded-like frames
        r = vae.refiner
        runs = {
            "flow network, NCHW (before)": lambda: motion_nchw(r, y, ref),
            "flow network, channels-last (shipped)": lambda: r.motion(y, ref),
            "whole refiner (shipped)": lambda: r(y, ref),
        }
        for path in a.against:
            other = load_vae(path).eval().float()
            assert other.refiner is not None, f"{path} has no portrait refiner"
            c = other.config
            name = f"whole refiner, {path} (width {c.refiner_width}, 1/{c.refiner_scale})"
            oref = other.reference(image)
            runs[name] = lambda o=other.refiner, oref=oref: o(y, oref)
        assert torch.allclose(motion_nchw(r, y, ref), r.motion(y, ref), atol=1e-4)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.repeats):
            for name, f in runs.items():
                t = time.perf_counter()
                f()
                times[name].append((time.perf_counter() - t) / a.frames * 1e3)
        if a.profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(a.repeats):
                    r(y, ref)
    for name, ts in times.items():
        print(f"{name}: min {min(ts):.2f}, median {np.median(ts):.2f} ms a frame")
    if a.profile:
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        per = a.repeats * a.frames * 1e3  # profiler times are in microseconds
        print("whole refiner, by op (self time, ms a frame):")
        for e in ops[:10]:
            print(f"  {e.key}: {e.self_cpu_time_total / per:.3f} ({e.count // a.repeats} calls)")


if __name__ == "__main__":
    main()
