"""Does a VAE keep the mouth in its single-frame latent, its 8-frame latents, or neither?

    .venv/bin/python docs/experiments/vae_mouth_in_time.py --data data/st1000 \\
        --vae src/readtalk/assets/demo/vae.safetensors --clips 16 [--figure mouths.jpg]

A causal video VAE encodes a clip's first frame alone and every later 8 frames together. For
``--clips`` held-out SynthTalk clips (33 frames each) every frame is reconstructed twice: as a
one-frame clip (the first-frame path, which the DiT's reference and motion latents use) and as
part of the whole clip (the 8-frame latents the DiT generates). For each way the script prints
how well the mouth survives against SynthTalk's exact openness: the Pearson correlation of the
mouth reader's gap on the reconstruction with the exact gap (pooled over all frames), the
fraction of clearly open mouths (exact openness > 0.5) that the reader sees open, and the
blur-tolerant score: darkness at the true mouth against the exact gap, per clip, averaged.
For the whole-clip path it also splits the blur-tolerant score by latent: darkness and exact gap
standardised per clip, pooled over clips, for frames 1-8 (a clip's first 8-frame latent) and
frames 9-32 (the later ones). ``--figure`` writes mouth crops: truth, one-frame, whole-clip rows
per clip, at the three most open and the most closed frame.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from readtalk.data.manifest import load_manifest, load_track, resolve
from readtalk.data.synthtalk.mouth_reader import pearson, read_mouth
from readtalk.eval.lipsync import locate_mouth, mouth_darkness
from readtalk.media import read_video, to_tensor, to_uint8, write_image
from readtalk.vae.model import VideoVAE

FRAMES = 33


def standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-6)


def crop(frames: np.ndarray, idx: list[int], centre: tuple[int, int], r: int = 36) -> np.ndarray:
    """The frames ``idx`` side by side, each cut to 2r x 2r around ``centre`` (x, y)."""
    x, y = centre
    return np.concatenate([frames[i][max(y - r, 0) : y + r, max(x - r, 0) : x + r] for i in idx], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--vae", required=True)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--figure", default="")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    vae = VideoVAE.load(a.vae).eval()
    scores = {"one frame": ([], [], [], []), "whole clip": ([], [], [], [])}
    rows = []
    by_latent = {"frames 1-8": ([], []), "frames 9-32": ([], [])}
    for rec in load_manifest(a.data, "test")[: a.clips]:
        frames = read_video(resolve(rec, "video"))[:FRAMES]
        track = load_track(rec)
        gap = np.asarray(track["measures"]["gap"], np.float64)[:FRAMES]
        opening = np.asarray(track["mouth"]["open"], np.float64)[:FRAMES]
        with torch.no_grad():
            clip = to_uint8(vae.decode(vae.encode(to_tensor(frames)[None]))[0])
            single = np.stack(
                [to_uint8(vae.decode(vae.encode(to_tensor(f[None])[None]))[0])[0] for f in frames]
            )
        centre = locate_mouth(frames)
        dz, gz = standardised(mouth_darkness(clip, centre)[1:]), standardised(gap[1:])
        for (d, g), part in zip(by_latent.values(), (slice(0, 8), slice(8, None)), strict=True):
            d.extend(dz[part])
            g.extend(gz[part])
        for name, rec_frames in (("one frame", single), ("whole clip", clip)):
            g, truth, seen, dark = scores[name]
            read = np.array([read_mouth(f).gap for f in rec_frames])
            g.extend(read)
            truth.extend(gap)
            seen.extend((read[opening > 0.5] > 0).tolist())
            c = pearson(gap, mouth_darkness(rec_frames, centre))
            if np.isfinite(c):
                dark.append(c)
        if a.figure and len(rows) < 4:
            idx = np.argsort(-opening)[:3].tolist() + np.argsort(opening)[:1].tolist()
            rows.append(np.concatenate([crop(f, idx, centre) for f in (frames, single, clip)], 0))
    for name, (g, truth, seen, dark) in scores.items():
        corr = pearson(np.asarray(truth), np.asarray(g))
        print(
            f"{name:10s}: mouth_corr {corr:.3f}, open mouths seen {np.mean(seen):.2f} "
            f"({len(seen)}), mouth_dark_corr {np.mean(dark):.3f} ({len(dark)} clips)"
        )
    for name, (d, g) in by_latent.items():
        corr = pearson(np.asarray(g), np.asarray(d))
        print(f"whole clip, {name}: standardised darkness vs gap, pooled: {corr:.3f} ({len(d)})")
    if a.figure:
        img = np.concatenate(rows, 0)
        write_image(a.figure, cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
        print(f"wrote {a.figure}")


if __name__ == "__main__":
    main()
