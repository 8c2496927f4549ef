"""Where the DiT loses the mouth: the held-out clips generated with the true latents as every
rolling window's context (teacher forcing), each new latent started from the true one noised to
``t0`` (SDEdit; ``t0`` 1: from pure noise, as generation), with the model's refiner, for
``readtalk eval`` (docs/results.md section 8, "Where the lip sync goes").

    .venv/bin/python docs/experiments/teacher_forced_lipsync.py --data data/st1000 \\
        --model src/readtalk/assets/demo --t0 1.0,0.75,0.5 --out results/teacher-forced
    readtalk eval --pred results/teacher-forced/t1 --ref data/st1000 \\
        --out results/teacher-forced/eval-t1

Writes ``OUT/t<t0>/<id>.mp4`` (the first ``--frames`` frames of each of the first ``--clips`` test
clips, with their audio); finished files are kept (resumable).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from refiner_dit_data import generate
from tqdm import tqdm

from readtalk.data.manifest import clip_audio_path, load_manifest
from readtalk.media import SAMPLES_PER_FRAME, load_audio, write_video
from readtalk.pipeline import Pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--t0", default="1.0,0.75,0.5", help="comma-separated start levels")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--frames", type=int, default=113, help="8k+1, at most the clips' - 8")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    pipe = Pipeline.from_pretrained(a.model)
    tests = load_manifest(a.data, "test")[: a.clips]
    for t0 in [float(x) for x in a.t0.split(",")]:
        out = Path(a.out) / f"t{t0:g}"
        out.mkdir(parents=True, exist_ok=True)
        for i, rec in enumerate(tqdm(tests, desc=f"t0 {t0:g}", unit="clip")):
            path = out / f"{rec['id']}.mp4"
            if path.is_file():
                continue
            frames = generate(pipe, rec, a.frames, pipe.size, t0, a.seed * 1009 + i, refine=True)
            audio = load_audio(clip_audio_path(rec))[: a.frames * SAMPLES_PER_FRAME]
            tmp = path.with_suffix(".part.mp4")
            write_video(tmp, frames, audio)
            tmp.replace(path)


if __name__ == "__main__":
    main()
