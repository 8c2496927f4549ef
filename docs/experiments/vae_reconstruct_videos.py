"""Write a dataset's test videos encoded and decoded by a VAE, with their audio (the ceiling row
of docs/results.md: the best any DiT on these latents can do).

    .venv/bin/python docs/experiments/vae_reconstruct_videos.py --data data/st1000 \\
        --vae src/readtalk/assets/demo/vae.safetensors --clips 32 --out recon32/
    readtalk eval --pred recon32/ --ref data/st1000 --out eval/recon --syncnet W

Each video is encoded whole (posterior mean) and decoded piece by piece, by either kind of VAE
(``load_vae``); a frame count that is not 8k+1 is cut to the largest 8k+1 and the audio with it.
A VAE with a portrait refiner decodes with the clip's reference portrait, as generation does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from readtalk.data.manifest import load_manifest, resolve
from readtalk.media import VideoWriter, load_audio, read_video, to_tensor, to_uint8
from readtalk.train.vae import portrait_tensor
from readtalk.vae.factorised import load_vae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--vae", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clips", type=int, default=32, help="first test clips (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    vae = load_vae(a.vae).eval()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_manifest(a.data, "test")
    for rec in tqdm(records[: a.clips or None], desc="reconstruct", unit="clip"):
        frames = read_video(resolve(rec, "video"))
        n = 1 + 8 * ((len(frames) - 1) // 8)
        audio = load_audio(resolve(rec, "video"))[: n * 640]
        portrait = vae.reference(portrait_tensor(rec, frames.shape[1]))  # None: no refiner
        with torch.no_grad():
            video = vae.decode(
                vae.encode(to_tensor(frames[:n])[None]), piece=16, reference=portrait
            )
        h, w = frames.shape[1:3]
        with VideoWriter(out / f"{rec['id']}.mp4", w, h, fps=25) as vw:
            vw.add_audio(audio)
            for f in to_uint8(video[0]):
                vw.write(f)


if __name__ == "__main__":
    main()
