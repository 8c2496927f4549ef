"""A refiner's training data with frames the DiT drew, aligned with the truth: the generated mouths
are what the refiner must keep, and reconstructions do not show it them (docs/results.md section
9, "Frames the DiT drew").

    .venv/bin/python docs/experiments/refiner_dit_data.py --data data/st1000 \
        --src runs/refiner-w32s8-r4/refiner_data.pt --model src/readtalk/assets/demo \
        --out runs/refiner-w32s8-dit-1 --clips 600

For ``--clips`` of the clips in a run's ``refiner_data.pt`` (``readtalk train refiner``; evenly
spread), the clip's first frames are encoded, and a live session of the model (its rolling DiT,
settings, noise gate and streaming decoder) generates them from the clip's speech and portrait
with two changes: each window's context latents are the true ones (teacher forcing), and its new
latents start from the true latents noised to ``t0`` (uniform in ``--t0``, per clip) instead of
pure noise, then follow the model's schedule below ``t0`` (SDEdit). Head pose and timing so stay
the truth's while the mouth and the blur are the DiT's. The frames are decoded without a
refiner, as the refiner sees them. Their kept frames are added as new rows (the same clip index,
truth, portrait and boxes; ``recon`` the DiT's frames), so the file holds every reconstruction
and these; it is written into the folder ``--out`` with the source's key, so
``readtalk train refiner --out OUT --resume ...`` trains on it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from refiner_blur_data import load_run_data, mouth_area, mouth_boxes, save_run_data
from tqdm import tqdm

import readtalk.session as session_mod
from readtalk.data.manifest import clip_audio_path, load_reference, resolve
from readtalk.diffusion import ans_sample, timestep_schedule
from readtalk.media import SAMPLES_PER_FRAME, fit_size, load_audio, read_video, to_tensor
from readtalk.pipeline import Pipeline
from readtalk.train.refiner import kept_frames


class TeacherForced:
    """``session.sample_clip`` replaced: a rolling window's context is the true latents and its
    new latents start at ``t0`` from the true ones (module docstring)."""

    def __init__(self, truth: torch.Tensor, schedule: torch.Tensor, gen: torch.Generator):
        self.truth, self.gen = truth, gen  # (1, C, L, h, w) normalised
        self.schedule = schedule  # t0 > ... > 0

    def __call__(self, model_fn, window, cond, schedule, shape, motion=None, **kw):
        m = window.motion_latents
        first = 0 if window.index == 0 else window.index + 1 - m
        z0 = self.truth[:, :, first : first + window.latents]
        noise = torch.randn(z0.shape, generator=self.gen)
        t0 = float(self.schedule[0])
        start = noise.clone()
        start[:, :, m:] = (1 - t0) * z0[:, :, m:] + t0 * noise[:, :, m:]
        return ans_sample(
            model_fn, start, self.schedule, motion=z0[:, :, :m] if m else None,
            motion_mode=kw.get("motion_mode", "async"), cond=cond, guidance=kw["guidance"],
            motion_floor=kw.get("motion_floor", 0.0),
        )  # fmt: skip


@torch.no_grad()
def generate(
    pipe: Pipeline, rec: dict, frames: int, size: int, t0: float, seed: int, refine: bool = False
) -> np.ndarray:
    """The clip's first ``frames`` frames as the model draws them from its truth at ``t0``,
    uint8 (frames, H, W, 3), unrefined (``refine``: with the model's refiner, as generated)."""
    st = pipe.default_settings.override(seed=seed)
    video = fit_size(read_video(resolve(rec, "video"), frames + 8), size)
    truth = pipe.models.encode(to_tensor(np.ascontiguousarray(video))[None])
    full = timestep_schedule(st.steps, st.shift)
    sched = torch.tensor([t0] + [float(t) for t in full if float(t) < t0 - 1e-6])
    gen = torch.Generator().manual_seed(seed)
    audio = load_audio(clip_audio_path(rec))[: (frames + 2) * SAMPLES_PER_FRAME]
    saved = session_mod.sample_clip
    session_mod.sample_clip = TeacherForced(truth, sched, gen)
    try:
        s = session_mod.Session(pipe.models, load_reference(rec, size), st)
        if not refine:
            s._refine = None  # the refiner's input: frames decoded without it
        out = [*s.push(audio), *s.flush()]
    finally:
        session_mod.sample_clip = saved
    got = np.stack(out)  # push and flush return (H, W, 3) frames
    if len(got) < frames:
        raise SystemExit(f"error: {rec['id']}: {len(got)} frames generated, {frames} wanted")
    return got[:frames]


def mouth_from_input(t: dict, rows: range, boxes: torch.Tensor) -> None:
    """In place: the truth of ``rows`` takes its input's (``recon``) pixels inside each frame's
    mouth box (``boxes`` (N, k, 3, 4), 4 px wider each side), so training asks the refiner to
    keep the mouth it is given there, and the truth's detail everywhere else."""
    size = t["truth"].shape[-1]
    for i in rows:
        for j in range(t["truth"].shape[1]):
            ys, xs = mouth_area(boxes, i, j, size)
            t["truth"][i, j, :, ys, xs] = t["recon"][i, j, :, ys, xs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--src", required=True, help="a run's refiner_data.pt")
    p.add_argument("--model", required=True, help="a model folder (its DiT draws the frames)")
    p.add_argument("--out", required=True, help="the new run folder")
    p.add_argument("--clips", type=int, default=600, help="clips given DiT frames")
    p.add_argument("--run-clips", type=int, default=600, help="the run's clips setting")
    p.add_argument("--t0", type=float, nargs=2, default=(0.5, 0.9))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mouth-from-input", action="store_true",
        help="the new rows' target keeps the DiT's own mouth (mouth box, 4 px wider)",
    )  # fmt: skip
    a = p.parse_args()
    saved, recs, rows, cfg = load_run_data(a.src, a.data, a.run_clips)
    t = saved["tensors"]
    n, k = t["recon"].shape[:2]
    keep = kept_frames(cfg)
    size = t["recon"].shape[-1]
    pipe = Pipeline.from_pretrained(a.model)
    rng = np.random.default_rng(a.seed)
    pick = np.linspace(0, n - 1, min(a.clips, n)).round().astype(int)
    made = []
    for row in tqdm(pick, desc="DiT frames", unit="clip"):
        t0 = float(rng.uniform(*a.t0))
        rec = recs[rows[row]]
        v = generate(pipe, rec, cfg.window, size, t0, a.seed * 100003 + int(row))
        made.append(torch.from_numpy(np.ascontiguousarray(v[keep])).movedim(-1, -3))
    new = torch.from_numpy(pick)
    t["recon"] = torch.cat([t["recon"], torch.stack(made)])
    for name in ("truth", "ref", "ref_blur"):
        t[name] = torch.cat([t[name], t[name][new]])
    t["index"] = torch.cat([torch.as_tensor(rows), torch.as_tensor(rows)[new]])
    if a.mouth_from_input:
        boxes = mouth_boxes(recs, t["index"].tolist(), cfg, size)
        mouth_from_input(t, range(n, n + len(made)), boxes)
    path = save_run_data(saved, a.out)
    print(f"{len(made)} clips x {k} DiT frames added to {n} clips' reconstructions: {path}")


if __name__ == "__main__":
    main()
