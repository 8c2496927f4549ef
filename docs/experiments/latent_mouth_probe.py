"""How much of the mouth's openness a VAE keeps in its latents (a SynthTalk diagnostic).

    .venv/bin/python docs/experiments/latent_mouth_probe.py --data data/st1000 \
        --vae runs/vae-res-small-256-p3/vae.safetensors \
        --vae runs/vae-res-small-c128-256/vae.safetensors

For each VAE, three 25-frame windows (frames 0, 48, 96) of ``--train-clips`` random training clips
and the first ``--test-clips`` test clips (held-out identities) are encoded; every latent frame
j >= 1 is paired with SynthTalk's exact mouth openness of its eight video frames. A ridge
regression from the latent cells around the mouth (rows 4-5, columns 3-4 of the 8 x 8 grid at
256 px, all channels) to the eight openness values is fitted on the training clips, and its
Pearson correlation with the truth on the test clips is printed for several ridge strengths.
What the latents do not hold, no decoder can draw and no DiT can generate: a low held-out
correlation points at the encoder, a high one with poor reconstructions at the decoder.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from readtalk.data.manifest import load_manifest, load_track, resolve
from readtalk.media import read_video, to_tensor
from readtalk.vae.model import VideoVAE

STARTS, FRAMES = (0, 48, 96), 25
ROWS, COLS = slice(4, 6), slice(3, 5)


def encode(vae_path: str, records: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vae = VideoVAE.load(vae_path).eval()
    xs, ys, split = [], [], []
    for rec in records:
        video = read_video(resolve(rec, "video"))
        opening = np.asarray(load_track(rec)["mouth"]["open"], np.float64)
        for s in STARTS:
            if s + FRAMES > len(video):
                continue
            with torch.no_grad():
                z = vae.encode(to_tensor(video[s : s + FRAMES])[None])[0]  # (C, 4, h, w)
            for j in range(1, z.shape[1]):
                xs.append(z[:, j, ROWS, COLS].flatten().double().numpy())
                ys.append(opening[s + 8 * j - 7 : s + 8 * j + 1])
                split.append(rec["split"])
    return np.array(xs), np.array(ys), np.array(split)


def probe(x: np.ndarray, y: np.ndarray, split: np.ndarray, lam: float) -> float:
    tr, te = split == "train", split == "test"
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    xn, ym = (x - mu) / sd, y[tr].mean(0)
    w = np.linalg.solve(xn[tr].T @ xn[tr] + lam * np.eye(x.shape[1]), xn[tr].T @ (y[tr] - ym))
    pred = xn[te] @ w + ym
    return float(np.corrcoef(pred.ravel(), y[te].ravel())[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="SynthTalk dataset (manifest.jsonl, tracks)")
    p.add_argument("--vae", action="append", required=True, help="vae.safetensors (repeatable)")
    p.add_argument("--train-clips", type=int, default=160)
    p.add_argument("--test-clips", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    records = load_manifest(a.data)
    train = [r for r in records if r["split"] == "train"]
    pick = np.random.default_rng(0).choice(len(train), min(a.train_clips, len(train)), False)
    chosen = [train[i] for i in pick] + [r for r in records if r["split"] == "test"][: a.test_clips]
    for path in a.vae:
        x, y, split = encode(path, chosen)
        scores = ", ".join(f"ridge {lam:g}: {probe(x, y, split, lam):.3f}" for lam in (1, 10, 100))
        print(f"{path}: {x.shape[1]} latent numbers -> held-out mouth-openness corr {scores}")


if __name__ == "__main__":
    main()
