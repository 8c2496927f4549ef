"""Seam ratio of long generated videos against the VAE decoder's context (``decode_context``).

    .venv/bin/python docs/experiments/decode_context_sweep.py --model src/readtalk/assets/demo \\
        --long data/long60 --contexts 0,2,4,8,17 --steps 8

For each held-out long clip and each context: generate from the clip's portrait and speech,
then print the seam ratio at clip starts and the same ratio at the other latent starts (the
picture's own 8-frame rhythm; a seamless video has the two alike) and the real-time factor.
"""

from __future__ import annotations

import argparse
import time

import torch

from readtalk.data.manifest import load_manifest, resolve
from readtalk.eval.lipsync import frame_changes, seam_ratio
from readtalk.media import load_audio
from readtalk.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--long", required=True, help="dataset of long clips (test split used)")
    ap.add_argument("--contexts", default="0,2,4,8,17")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--clips", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = Pipeline.from_pretrained(a.model)
    tf = pipe.vae.temporal_factor
    for rec in load_manifest(a.long, "test")[: a.clips]:
        audio = load_audio(resolve(rec, "video"))
        for n in (int(c) for c in a.contexts.split(",")):
            t0 = time.perf_counter()
            r = pipe(
                str(resolve(rec, "ref")), audio, steps=a.steps, decode_context=n, progress=False
            )
            rtf = (time.perf_counter() - t0) / (len(audio) / 16000)
            ch = frame_changes(r.frames)
            clip_len = r.settings.clip_frames - 1  # new frames per later clip (1 motion latent)
            clips = list(range(clip_len + 1, len(ch) + 1, clip_len))
            other = [b for b in range(1 + tf, len(ch) + 1, tf) if b not in clips]
            print(
                f"{rec['id']} decode_context {n:2d}: seam ratio {seam_ratio(ch, clips):.2f}, "
                f"other latent starts {seam_ratio(ch, other):.2f}, real-time factor {rtf:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
