"""Time the VAE's one-frame fast path (readtalk.vae.frameconv) against LTX's 3D convolutions on
the same weights: a frame-VAE training step, encoding and decoding single frames.

    python docs/experiments/bench_frame_path.py [--preset res-small] [--threads 2] [--repeats 3]

Prints the best of ``--repeats`` seconds per operation for both paths and their ratio
(docs/speed.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from readtalk.bench import processor_name
from readtalk.errors import ReadtalkError
from readtalk.vae.frameconv import use_frame_path
from readtalk.vae.model import VideoVAE


def _timed(fn, repeats: int) -> float:
    """Best of ``repeats`` after a warm-up (the least disturbed by other load on the machine)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="res-small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    try:
        vae = VideoVAE(a.preset)
    except ReadtalkError as e:
        p.exit(2, f"error: {e}\n")
    crops = torch.rand(32, 3, 1, 128, 128) * 2 - 1  # the fast recipe's frame-VAE batch
    frames = torch.rand(32, 3, 1, 256, 256) * 2 - 1
    opt = torch.optim.AdamW(vae.parameters(), 1e-5)

    def step() -> None:
        mean, _ = vae.encode_dist(crops)
        loss = (vae.decode(mean) - crops).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    print(f"{a.preset}, {a.threads} threads, on {processor_name()}")
    with torch.no_grad():
        z = vae.encode(frames)

    def encode() -> None:
        with torch.no_grad():
            vae.encode(frames)

    def decode() -> None:
        with torch.no_grad():
            vae.decode(z)

    rows = {}
    for name, on in (("3D convolutions", False), ("one-frame path", True)):
        use_frame_path(vae.ae, on=on)
        rows[name] = [_timed(fn, a.repeats) for fn in (step, encode, decode)]
    heads = ("train step (32 x 128 px)", "encode 32 x 256 px", "decode 32 x 256 px")
    print(f"{'':18}" + "".join(f"{h:>26}" for h in heads))
    for name, r in rows.items():
        print(f"{name:18}" + "".join(f"{t:>24.3f} s" for t in r))
    slow, fast = rows.values()
    print(
        f"{'speed-up':18}" + "".join(f"{s / f:>24.2f} x" for s, f in zip(slow, fast, strict=True))
    )


if __name__ == "__main__":
    main()
