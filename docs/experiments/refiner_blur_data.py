"""A refiner's training data with the mouths of half its decoded frames blurred: the DiT's
generated mouths are blurrier than the reconstructions the refiner trains on (docs/results.md
section 9, "A wider flow network at 1/8").

    .venv/bin/python docs/experiments/refiner_blur_data.py --data data/st1000 \
        --src runs/refiner-w32s8-r4/refiner_data.pt --out runs/refiner-w32s8-blur-1

Reads a run's ``refiner_data.pt`` (``readtalk train refiner``), blurs the mouth box (SynthTalk
tracks, 4 px more on each side) of each decoded frame with probability ``--p`` by a Gaussian
of sigma uniform in ``--sigma`` pixels, and writes the file into the folder ``--out`` with the
same key, so ``readtalk train refiner --out OUT --resume ...`` trains on it. The truth, the
portraits and the other frames are unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from readtalk.data.manifest import load_manifest
from readtalk.train.refiner import DATA, RefinerRunConfig, region_boxes


def blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """(3, H, W) float -> the same, Gaussian-blurred (separable, edges replicated)."""
    r = int(np.ceil(3 * sigma))
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma * sigma))
    g = g / g.sum()
    x = F.pad(img[None], (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, g.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--src", required=True, help="a run's refiner_data.pt")
    p.add_argument("--out", required=True, help="the new run folder")
    p.add_argument("--clips", type=int, default=600, help="the run's clips setting")
    p.add_argument("--p", type=float, default=0.5)
    p.add_argument("--sigma", type=float, nargs=2, default=(1.0, 3.0))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    saved = torch.load(a.src, map_location="cpu", weights_only=False)
    t = saved["tensors"]
    recs = [r for r in load_manifest(a.data) if r["split"] == "train"]
    recs = recs[: a.clips] if a.clips else recs
    rows = t["index"].tolist() if "index" in t else list(range(t["truth"].shape[0]))
    cfg = RefinerRunConfig(data=a.data, vae="-", window=saved["window"], frames_per_clip=saved["k"])
    size = t["recon"].shape[-1]
    boxes = region_boxes([recs[i] for i in rows], cfg, size)
    if boxes is None:
        raise SystemExit("error: these clips' tracks have no face geometry (SynthTalk only)")
    rng = np.random.default_rng(a.seed)
    recon, done = t["recon"], 0
    for i in range(recon.shape[0]):
        for j in range(recon.shape[1]):
            if rng.random() < 1.0 - a.p:
                continue
            x0, y0, x1, y1 = (int(v) for v in boxes[i, j, 0])
            x0, y0 = max(x0 - 4, 0), max(y0 - 4, 0)
            x1, y1 = min(x1 + 4, size), min(y1 + 4, size)
            b = blur(recon[i, j].float(), rng.uniform(*a.sigma))
            recon[i, j, :, y0:y1, x0:x1] = b[:, y0:y1, x0:x1].round().clamp(0, 255).to(torch.uint8)
            done += 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(saved, out / DATA)
    print(f"blurred the mouths of {done} of {recon.shape[0] * recon.shape[1]} frames: {out / DATA}")


if __name__ == "__main__":
    main()
