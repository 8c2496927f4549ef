"""The mouth scores of a factorised VAE's frame path alone (every frame encoded and decoded on
its own, no temporal packing): the ceiling for its packer, next to ``readtalk eval-vae``.

    .venv/bin/python docs/experiments/frame_path_scores.py --vae runs/fvae-res/vae.safetensors \\
        --data data/st1000 --frames 121 --clips 16
"""

from __future__ import annotations

import argparse
import json

import torch

from readtalk.data.manifest import load_manifest
from readtalk.errors import ReadtalkError
from readtalk.train.vae import eval_videos, evaluate_videos
from readtalk.vae.factorised import FactorisedVAE, load_vae


class FramePath:
    """encode / decode through the frame VAE only, per frame (the interface evaluate_videos
    uses)."""

    def __init__(self, vae: FactorisedVAE) -> None:
        self.vae = vae

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.frame_latents(video)

    def decode(self, s: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_frames(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vae", required=True, help="a factorised vae.safetensors")
    ap.add_argument("--data", required=True)
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--clips", type=int, default=16)
    a = ap.parse_args()
    vae = load_vae(a.vae).eval()
    if not isinstance(vae, FactorisedVAE):
        raise ReadtalkError(f"{a.vae} is not a factorised VAE")
    recs = load_manifest(a.data, "test")
    videos = eval_videos(recs, a.frames, int(recs[0].get("size") or 0), a.clips)
    with torch.no_grad():
        print(json.dumps(evaluate_videos(FramePath(vae), videos, mouth=True), indent=2))


if __name__ == "__main__":
    try:
        main()
    except ReadtalkError as e:
        raise SystemExit(f"error: {e}") from None
