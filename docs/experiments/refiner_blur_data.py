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


def load_run_data(src: str, data: str, clips: int):
    """A run's ``refiner_data.pt`` (the whole saved dict: key and ``tensors``), the run's training
    records (its first ``clips``; 0: all), each tensor row's position among them, and a config
    with the file's window and frames."""
    saved = torch.load(src, map_location="cpu", weights_only=False)
    t = saved["tensors"]
    recs = [r for r in load_manifest(data) if r["split"] == "train"]
    recs = recs[:clips] if clips else recs
    rows = t["index"].tolist() if "index" in t else list(range(t["truth"].shape[0]))
    cfg = RefinerRunConfig(data=data, vae="-", window=saved["window"], frames_per_clip=saved["k"])
    return saved, recs, rows, cfg


def mouth_boxes(recs: list[dict], rows: list[int], cfg: RefinerRunConfig, size: int):
    """``region_boxes`` of these rows' clips; exits with a one-line error without face geometry."""
    boxes = region_boxes([recs[i] for i in rows], cfg, size)
    if boxes is None:
        raise SystemExit("error: these clips' tracks have no face geometry (SynthTalk only)")
    return boxes


def mouth_area(boxes: torch.Tensor, i: int, j: int, size: int, margin: int = 4):
    """(rows, columns) slices of row ``i``'s frame ``j`` mouth box, ``margin`` px wider each
    side, inside the ``size``-pixel frame."""
    x0, y0, x1, y1 = (int(v) for v in boxes[i, j, 0])
    ys = slice(max(y0 - margin, 0), min(y1 + margin, size))
    return ys, slice(max(x0 - margin, 0), min(x1 + margin, size))


def save_run_data(saved: dict, out: str) -> Path:
    """``saved`` as ``refiner_data.pt`` in the run folder ``out`` (made if needed)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(saved, folder / DATA)
    return folder / DATA


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
    saved, recs, rows, cfg = load_run_data(a.src, a.data, a.clips)
    recon, done = saved["tensors"]["recon"], 0
    size = recon.shape[-1]
    boxes = mouth_boxes(recs, rows, cfg, size)
    rng = np.random.default_rng(a.seed)
    for i in range(recon.shape[0]):
        for j in range(recon.shape[1]):
            if rng.random() < 1.0 - a.p:
                continue
            ys, xs = mouth_area(boxes, i, j, size)
            b = blur(recon[i, j].float(), rng.uniform(*a.sigma))
            recon[i, j, :, ys, xs] = b[:, ys, xs].round().clamp(0, 255).to(torch.uint8)
            done += 1
    path = save_run_data(saved, a.out)
    print(f"blurred the mouths of {done} of {recon.shape[0] * recon.shape[1]} frames: {path}")


if __name__ == "__main__":
    main()
