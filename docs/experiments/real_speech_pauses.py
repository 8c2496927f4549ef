"""The shipped rolling DiT in the near-silence of a real recording (docs/results.md, section 6,
"The rolling DiT"): the first 10 s of pyannote-audio's ``sample.wav`` (its first 5 s are
near-silent), as recorded, with those 5 s replaced by digital silence, and by -80 dB white
noise; the fraction of frames whose mouth is open (mouth reader, gap > OPEN_GAP) in the first
5 s and in the next 5.

    OMP_NUM_THREADS=2 .venv/bin/python docs/experiments/real_speech_pauses.py [--model DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from readtalk.data.synthtalk.mouth_reader import read_mouth_track
from readtalk.demo import demo_portrait
from readtalk.eval.lipsync import OPEN_GAP, frame_energy
from readtalk.media import SAMPLE_RATE, load_audio
from readtalk.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).parent))
from real_speech import PYANNOTE_SAMPLE

FIVE_S = 5 * SAMPLE_RATE


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the shipped demo)")
    a = p.parse_args()
    torch.set_num_threads(2)
    a = load_audio(PYANNOTE_SAMPLE)[: 2 * FIVE_S]
    e = frame_energy(a, 250)
    print(
        f"frame energy, first 5 s: median {np.median(e[:125]):.1f} dBFS, max {e[:125].max():.1f}; "
        f"next 5 s: 95th percentile {np.percentile(e[125:], 95):.1f}"
    )
    noise = np.random.default_rng(0).normal(0, 1e-4, FIVE_S).astype(np.float32)
    variants = {
        "as recorded": a,
        "first 5 s digital silence": np.concatenate([np.zeros(FIVE_S, np.float32), a[FIVE_S:]]),
        "first 5 s -80 dB white noise": np.concatenate([noise, a[FIVE_S:]]),
    }
    pipe = Pipeline.from_pretrained(a.model)
    print("| portrait | first 5 s | open, first 5 s | open, next 5 s |\n|---|---|---|---|")
    for seed in (0, 1):
        for name, audio in variants.items():
            gap = read_mouth_track(pipe(demo_portrait(256, seed), audio, seed=0).frames)[:, 0]
            print(
                f"| {seed} | {name} | {np.mean(gap[:125] > OPEN_GAP):.2f} | "
                f"{np.mean(gap[125:] > OPEN_GAP):.2f} |"
            )


if __name__ == "__main__":
    main()
