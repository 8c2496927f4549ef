"""Does the mouth survive 8x temporal compression of per-frame latents? A factorised-VAE probe.

    .venv/bin/python docs/experiments/temporal_packer_probe.py --data data/st1000 \\
        --vae src/readtalk/assets/demo/vae.safetensors --train-clips 300 --channels 128

A causal video VAE's single-frame path keeps SynthTalk's mouth (``docs/experiments/vae_mouth_in_time.py``:
0.96 for the demo VAE) and its 8-frame latents lose it. This probe tests the factorised
alternative: keep the VAE's single-frame code for every frame, and learn only the temporal
compression on top of it. Every frame of ``--train-clips`` training clips and ``--test-clips``
held-out clips (33 frames each) is encoded alone (posterior mean, ``(C, h, w)`` per frame). A
small "packer" maps each run of 8 per-frame latents (frames 1-8, 9-16, ...) to one latent of
``--channels`` channels on the same h x w grid and back (3x3 convolutions of ``--width``
channels, no temporal context beyond the 8 frames: the same 32x32x8 compression as the video
VAE), trained for ``--steps`` steps on the MSE of the standardised per-frame latents (plus,
with ``--deviation-weight``, the MSE of each frame's deviation from its 8 frames' mean).
``--context`` lets the packer see the frame before each group (see ``Packer``); ``--unroll``
trains it on pairs of groups, the second decoded after the first one's decoded last frame, as
at generation, and ``--seam-weight`` adds the MSE of the change into the second group's first
frame (reconstruction against truth).
``--latents FILE`` keeps the training clips' per-frame latents for later runs. The held-out
clips' packed and unpacked latents are then decoded frame by frame, and the mouth is scored as
in ``vae_mouth_in_time.py``: darkness at the true mouth against SynthTalk's exact gap, per clip,
averaged (``mouth_dark_corr``), for the per-frame path alone and after the packer; and flicker:
the mean change between consecutive frames, and the change into the first frame of each 8-frame
latent over the median change elsewhere (1: no jump where one latent hands over to the next).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from readtalk.data.manifest import load_manifest, load_track, resolve
from readtalk.data.synthtalk.mouth_reader import pearson
from readtalk.errors import ReadtalkError
from readtalk.eval.lipsync import frame_changes, locate_mouth, mouth_darkness, seam_ratio
from readtalk.media import read_video, to_tensor, to_uint8
from readtalk.vae.model import VideoVAE

FRAMES, GROUP = 33, 8


class Packer(nn.Module):
    """(B, 8, C, h, w) per-frame latents <-> (B, K, h, w) packed latent.

    With ``context`` both halves also see the per-frame latent (B, C, h, w) of the frame just
    before the group: the true one when encoding, the last decoded one when decoding (for a
    clip's first group, the first frame's own latent), so that one group continues the last."""

    def __init__(
        self, c: int, k: int, width: int, context: bool = False, residual: bool = False
    ) -> None:
        super().__init__()
        act, extra = nn.SiLU, c if context else 0
        self.context, self.residual = context, residual
        self.enc = nn.Sequential(
            nn.Conv2d(GROUP * c + extra, width, 3, padding=1), act(),
            nn.Conv2d(width, width, 3, padding=1), act(),
            nn.Conv2d(width, k, 1),
        )  # fmt: skip
        self.dec = nn.Sequential(
            nn.Conv2d(k + extra, width, 3, padding=1), act(),
            nn.Conv2d(width, width, 3, padding=1), act(),
            nn.Conv2d(width, GROUP * c, 1),
        )  # fmt: skip

    def _with(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, prev], dim=1) if self.context else x

    def encode(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        b, g, c, h, w = x.shape
        return self.enc(self._with(x.reshape(b, g * c, h, w), prev))

    def decode(self, z: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        out = self.dec(self._with(z, prev)).reshape(b, GROUP, -1, h, w)
        return out + prev[:, None] if self.residual else out

    def forward(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x, prev), prev)


@torch.no_grad()
def frame_latents(vae: VideoVAE, frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, C, h, w): every frame encoded alone."""
    video = to_tensor(frames)  # (3, F, H, W)
    clips = video.permute(1, 0, 2, 3)[:, :, None]  # (F, 3, 1, H, W)
    return vae.encode(clips)[:, :, 0]


@torch.no_grad()
def decode_frames(vae: VideoVAE, latents: torch.Tensor) -> np.ndarray:
    """(F, C, h, w) -> (F, H, W, 3) uint8, every frame decoded alone."""
    video = vae.decode(latents[:, :, None])  # (F, 3, 1, H, W)
    return to_uint8(video[:, :, 0].permute(1, 0, 2, 3))


def groups(lat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 33, C, h, w) -> frames 1-8, 9-16, ... of each clip (N * 4, 8, C, h, w), and the
    frame before each group (frames 0, 8, 16, 24: (N * 4, C, h, w))."""
    n, f, c, h, w = lat.shape
    runs = lat[:, 1:].reshape(n * ((f - 1) // GROUP), GROUP, c, h, w)
    return runs, lat[:, 0 : f - 1 : GROUP].reshape(-1, c, h, w)


@torch.no_grad()
def round_trip(packer: Packer, lat: torch.Tensor) -> torch.Tensor:
    """(N, 33, C, h, w) standardised -> the same after packing and unpacking, groups decoded in
    order, each after the last decoded frame (the first frame is kept as it is)."""
    runs, prev = groups(lat)
    z = packer.encode(runs, prev).unflatten(0, (len(lat), -1))  # encoder: true previous frames
    out, last = [lat[:, :1]], lat[:, 0]
    for g in range(z.shape[1]):
        run = packer.decode(z[:, g], last)
        out.append(run)
        last = run[:, -1]
    return torch.cat(out, dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--vae", required=True)
    ap.add_argument("--train-clips", type=int, default=300)
    ap.add_argument("--test-clips", type=int, default=16)
    ap.add_argument("--channels", type=int, default=128, help="packed latent channels")
    ap.add_argument("--width", type=int, default=256, help="packer convolution width")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--deviation-weight",
        type=float,
        default=0.0,
        help="extra MSE on each frame's deviation from its 8 frames' mean",
    )
    ap.add_argument(
        "--context",
        action="store_true",
        help="encode and decode each group after the frame before it",
    )
    ap.add_argument(
        "--unroll",
        action="store_true",
        help="with --context: train on pairs of groups, the second decoded after the first",
    )
    ap.add_argument(
        "--seam-weight",
        type=float,
        default=0.0,
        help="with --unroll: MSE of the change into the second group's first frame",
    )
    ap.add_argument(
        "--residual",
        action="store_true",
        help="with --context: the decoder predicts each frame's change from the context frame",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latents", default="", help="file to keep the training latents in")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vae = VideoVAE.load(a.vae).eval()
    start = time.time()

    def encode(recs: list[dict]) -> tuple[torch.Tensor, list[np.ndarray]]:
        lats, frames = [], []
        for rec in tqdm(recs, desc="encode frames"):
            f = read_video(resolve(rec, "video"))[:FRAMES]
            lats.append(frame_latents(vae, f))
            frames.append(f)
        return torch.stack(lats), frames

    train_recs = load_manifest(a.data, "train")[: a.train_clips]
    test_recs = load_manifest(a.data, "test")[: a.test_clips]
    if a.latents and Path(a.latents).is_file():
        train_lat = torch.load(a.latents)
        if len(train_lat) != len(train_recs):
            raise SystemExit(f"{a.latents} holds {len(train_lat)} clips, not {len(train_recs)}")
    else:
        train_lat, _ = encode(train_recs)
        if a.latents:
            torch.save(train_lat, a.latents)
    test_lat, test_frames = encode(test_recs)
    print(f"per-frame latents {tuple(train_lat.shape[2:])}, {time.time() - start:.0f} s")
    mean = train_lat.mean((0, 1, 3, 4), keepdim=True)[0]  # (1, C, 1, 1)
    std = train_lat.std((0, 1, 3, 4), keepdim=True)[0]
    data, data_prev = groups((train_lat - mean) / std)
    packer = Packer(train_lat.shape[2], a.channels, a.width, a.context, a.residual)
    opt = torch.optim.AdamW(packer.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    gen = torch.Generator().manual_seed(0)
    test_std = (test_lat - mean) / std
    bar = tqdm(range(a.steps), desc="train packer")
    per_clip = (FRAMES - 1) // GROUP

    def group_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = (y - x).pow(2).mean()
        if a.deviation_weight:  # the change within the 8 frames, where the mouth's motion is
            dev = (y - y.mean(1, keepdim=True)) - (x - x.mean(1, keepdim=True))
            loss = loss + a.deviation_weight * dev.pow(2).mean()
        return loss

    for step in bar:
        if a.unroll:  # a group and the next one, decoded after the first one's last frame
            clip = torch.randint(len(data) // per_clip, (a.batch,), generator=gen)
            idx = clip * per_clip + torch.randint(per_clip - 1, (a.batch,), generator=gen)
            x, x2 = data[idx], data[idx + 1]
            y = packer(x, data_prev[idx])
            y2 = packer.decode(packer.encode(x2, data_prev[idx + 1]), y[:, -1])
            loss = (group_loss(y, x) + group_loss(y2, x2)) / 2
            if a.seam_weight:  # the change into the second group's first frame, against truth
                seam = (y2[:, 0] - y[:, -1]) - (x2[:, 0] - x[:, -1])
                loss = loss + a.seam_weight * seam.pow(2).mean()
        else:
            idx = torch.randint(len(data), (a.batch,), generator=gen)
            x = data[idx]
            loss = group_loss(packer(x, data_prev[idx]), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == a.steps - 1:
            with torch.no_grad():
                test_loss = (round_trip(packer, test_std) - test_std)[:, 1:].pow(2).mean().item()
            bar.set_postfix(train=f"{loss.item():.4f}", test=f"{test_loss:.4f}")
    with torch.no_grad():
        rt = round_trip(packer, test_std)
        err = (rt - test_std)[:, 1:].pow(2).mean((0, 2, 3, 4)).reshape(-1, GROUP).mean(0)
        print("held-out latent MSE by position in the group (frames 1..8 of each latent):")
        print("  " + " ".join(f"{e:.4f}" for e in err.tolist()))
        packed = rt * std + mean
    scores: dict[str, list[float]] = {"per-frame latents": [], "packed 8 frames": []}
    # flicker: mean change between consecutive frames, and the change into the first frame of
    # each 8-frame latent (9, 17, 25) over the median change elsewhere
    motion: dict[str, list[tuple[float, float]]] = {"truth": [], **{k: [] for k in scores}}
    boundaries = list(range(1 + GROUP, FRAMES, GROUP))
    for rec, frames, lat, pk in zip(test_recs, test_frames, test_lat, packed, strict=True):
        gap = np.asarray(load_track(rec)["measures"]["gap"], np.float64)[:FRAMES]
        centre = locate_mouth(frames)
        ch = frame_changes(frames)
        motion["truth"].append((float(ch.mean()), seam_ratio(ch, boundaries)))
        for name, z in (("per-frame latents", lat), ("packed 8 frames", pk)):
            decoded = decode_frames(vae, z)
            c = pearson(gap[1:], mouth_darkness(decoded, centre)[1:])
            if np.isfinite(c):
                scores[name].append(c)
            ch = frame_changes(decoded)
            motion[name].append((float(ch.mean()), seam_ratio(ch, boundaries)))
    for name, s in scores.items():
        print(f"{name:18s}: mouth_dark_corr {np.mean(s):.3f} ({len(s)} held-out clips)")
    for name, m in motion.items():
        change, seam = np.mean(m, axis=0)
        print(f"{name:18s}: mean frame change {change:.2f} (0-255), latent-start ratio {seam:.2f}")
    # decoding cost of one 121-frame clip: 16 video latents (the causal 3-D decoder) against
    # 121 per-frame latents (the 2-D path) plus the packer's decoder
    c, h, w = test_lat.shape[2:]
    with torch.no_grad():
        timings = {}
        for name, fn in (
            ("video VAE decode, 16 latents", lambda: vae.decode(torch.randn(1, c, 16, h, w))),
            ("per-frame decode, 121 frames", lambda: vae.decode(torch.randn(121, c, 1, h, w))),
            (
                "packer decode, 15 latents",
                lambda: packer.decode(torch.randn(15, a.channels, h, w), torch.randn(15, c, h, w)),
            ),
        ):
            fn()
            t = time.perf_counter()
            for _ in range(3):
                fn()
            timings[name] = (time.perf_counter() - t) / 3
    for name, sec in timings.items():
        print(f"{name}: {sec:.2f} s per 121-frame clip ({a.threads} threads)")
    print(f"packed latent: {a.channels} channels per 8 frames; {time.time() - start:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except ReadtalkError as e:  # a missing or unreadable input: one line, as the CLI prints it
        raise SystemExit(f"error: {e}") from None
