"""Can a video autoencoder learn per-frame detail of a small object? A minutes-long probe.

    .venv/bin/python docs/experiments/vae_temporal_probe.py --preset res-small --steps 2000
    .venv/bin/python docs/experiments/vae_temporal_probe.py --plain --plain-time 1 --plain-channels 4

The task is the mouth problem stripped bare: ``--clips`` fixed 17-frame, 128-px clips, each a
uniform random colour with one 32-px-wide black bar at a random place whose height changes at
random from frame to frame (0-24 px, like a mouth opening). The autoencoder only has to memorise
these few clips. Every ``--every`` steps the script prints the L1 loss on frames 1-16 and the
per-frame score: the Pearson correlation, over frames 1-16, of the bar's darkness in the
reconstruction with its true height, averaged over the clips. A network that draws one mean bar
for all frames scores about 0 with a loss near 0.03; one that carries the heights scores near 1
with a lower loss.

``--preset`` trains a readtalk VAE preset (``VideoVAE``, the network ``readtalk train vae``
trains, on posterior means). ``--plain`` trains a plain convolutional autoencoder instead:
4x4 patches, then three stride-2 convolutions each way (SiLU, no normalisation; about 2.5 M
parameters), 32x32 in space and ``--plain-time`` (8, 4, 2 or 1) in time, ``--plain-channels``
latent channels. At ``--plain-time 1 --plain-channels 4`` it holds as many latent numbers per
frame as an 8x / 32-channel latent, with no temporal compression at all, which separates the
temporal question from the spatial one. docs/stage1.md has the results.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from readtalk.data.synthtalk.mouth_reader import pearson
from readtalk.errors import ReadtalkError
from readtalk.vae.config import get_preset
from readtalk.vae.model import VideoVAE

FRAMES, SIZE, BAR_W, BAR_H = 17, 128, 32, 24


def make_clip(rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
    """(3, F, S, S) in [-1, 1], the bar heights (F,) in [0, 1], and the bar's corner (x, y)."""
    video = np.ones((3, FRAMES, SIZE, SIZE), np.float32)
    video *= rng.uniform(-0.5, 0.5, (3, 1, 1, 1)).astype(np.float32)
    x, y = (int(v) for v in rng.integers(8, SIZE - BAR_W - 8, 2))
    heights = rng.uniform(0, 1, FRAMES)
    for f, h in enumerate(heights):
        video[:, f, y : y + int(h * BAR_H), x : x + BAR_W] = -1.0
    return torch.from_numpy(video), heights, (x, y)


class PlainAE(nn.Module):
    """Conv autoencoder, 32x32 in space and ``time``x in time (frames 1..16 of a clip)."""

    def __init__(self, channels: int = 32, time: int = 8) -> None:
        super().__init__()
        ts = {8: (2, 2, 2), 4: (2, 2, 1), 2: (2, 1, 1), 1: (1, 1, 1)}[time]  # temporal strides

        def down(i: int, o: int, t: int) -> nn.Module:
            return nn.Sequential(
                nn.Conv3d(i, o, 3, stride=(t, 2, 2), padding=1),
                nn.SiLU(),
                nn.Conv3d(o, o, 3, padding=1),
            )

        def up(i: int, o: int, t: int) -> nn.Module:
            return nn.Sequential(
                nn.ConvTranspose3d(i, o, (t, 2, 2), stride=(t, 2, 2)),
                nn.SiLU(),
                nn.Conv3d(o, o, 3, padding=1),
            )

        act = nn.SiLU
        self.enc = nn.Sequential(
            nn.Conv3d(3, 32, (1, 4, 4), stride=(1, 4, 4)), act(),
            down(32, 64, ts[0]), act(), down(64, 128, ts[1]), act(), down(128, 128, ts[2]), act(),
            nn.Conv3d(128, channels, 1),
        )  # fmt: skip
        self.dec = nn.Sequential(
            nn.Conv3d(channels, 128, 1), act(),
            up(128, 128, ts[2]), act(), up(128, 64, ts[1]), act(), up(64, 32, ts[0]), act(),
            nn.ConvTranspose3d(32, 3, (1, 4, 4), stride=(1, 4, 4)),
        )  # fmt: skip

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruct frames 1..F-1 (a multiple of 8); frame 0 is copied through."""
        rest = self.dec(self.enc(video[:, :, 1:]))
        return torch.cat([video[:, :, :1], rest], dim=2)


def per_frame_score(rec: torch.Tensor, clips: list) -> float:
    scores = []
    for i, (_, heights, (x, y)) in enumerate(clips):
        dark = -rec[i, :, 1:, y : y + BAR_H, x : x + BAR_W].mean((0, 2, 3)).detach().numpy()
        scores.append(pearson(heights[1:], dark))
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="a readtalk VAE preset (readtalk.vae.config.VAE_PRESETS)")
    which.add_argument("--plain", action="store_true", help="the plain conv autoencoder")
    ap.add_argument(
        "--plain-time",
        type=int,
        default=8,
        choices=(8, 4, 2, 1),
        help="temporal compression of --plain",
    )
    ap.add_argument("--plain-channels", type=int, default=32, help="latent channels of --plain")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--clips", type=int, default=4, help="fixed clips to memorise")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    if a.plain:
        model = PlainAE(a.plain_channels, a.plain_time)

        def reconstruct(v: torch.Tensor) -> torch.Tensor:
            return model(v)
    else:
        model = VideoVAE(get_preset(a.preset))

        def reconstruct(v: torch.Tensor) -> torch.Tensor:
            mean, _ = model.encode_dist(v)
            return model.decode(mean, clamp=False)

    n = sum(p.numel() for p in model.parameters())
    name = f"plain {a.plain_time}x/{a.plain_channels}ch" if a.plain else a.preset
    print(f"{name}: {n:,} parameters, lr {a.lr}, {a.clips} clips")
    clips = [make_clip(rng) for _ in range(a.clips)]
    video = torch.stack([c[0] for c in clips])
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    start = time.time()
    for step in range(a.steps + 1):
        rec = reconstruct(video)
        loss = (rec - video).abs()[:, :, 1:].mean()
        if step % a.every == 0 or step == a.steps:
            print(
                f"step {step:5d}  L1 {loss.item():.4f}  per-frame score "
                f"{per_frame_score(rec, clips):+.3f}  ({time.time() - start:.0f} s)",
                flush=True,
            )
        if step < a.steps:
            opt.zero_grad()
            loss.backward()
            opt.step()


if __name__ == "__main__":
    try:
        main()
    except ReadtalkError as e:  # a missing or unreadable input: one line, as the CLI prints it
        raise SystemExit(f"error: {e}") from None
