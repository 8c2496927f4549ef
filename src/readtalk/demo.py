"""``readtalk demo``: the main job of the README, with nothing to download.

With a trained model folder (``--model``, default: the demo model shipped inside the package at
``readtalk/assets/demo``), it speaks a sentence (espeak-ng, or ``--audio``) with a SynthTalk
identity (or ``--image``) and writes ``demo.mp4``, plus ``truth.mp4`` (the same sentence rendered
by SynthTalk with its exact mouth: what a perfect model would draw) when it made the inputs
itself, and reports the real-time factor (generation time / audio duration).

Without a model folder it falls back to what it did before a model existed: a small SynthTalk
sample and an overview sheet.

The shipped demo model knows SynthTalk faces only: it was trained on nothing else (see
docs/demo_model.md when present, and docs/prepare.md for training on real footage).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from readtalk.data.manifest import load_manifest, resolve
from readtalk.data.sheet import dataset_sheet
from readtalk.data.synthtalk import SynthConfig, generate, reference_portrait
from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLE_RATE, write_image
from readtalk.pipeline import Pipeline
from readtalk.release import default_model_dir, has_model


def synth_inputs(out: Path, size: int, seed: int) -> dict:
    """One SynthTalk clip, drawn from seed ``1000 + seed`` so that its identity and sentence
    are not in a training set made with a small seed: its reference portrait, speech and
    rendered truth."""
    work = out / "synthtalk"
    if work.exists():
        shutil.rmtree(work)
    generate(
        SynthConfig(clips=1, size=size, frames=121, seed=1000 + seed, workers=1),
        work,
        progress=False,
    )
    rec = load_manifest(work)[0]
    return {
        "image": resolve(rec, "ref"),
        "audio": resolve(rec, "audio"),
        "truth": resolve(rec, "video"),
        "text": rec.get("text", ""),
    }


def demo_portrait(size: int, seed: int = 0) -> np.ndarray:
    """The portrait ``synth_inputs(out, size, seed)`` uses, without rendering its clip: uint8
    (size, size, 3), a held-out SynthTalk face (the face a model trained on SynthTalk knows)."""
    return reference_portrait(1000 + seed, 0, size)


def run_demo(
    out: str | Path,
    model: str | Path | None = None,
    image: str | Path | None = None,
    audio: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Generate ``out/demo.mp4``; returns a summary (paths, seconds, real-time factor)."""
    out = Path(out)
    mdir = Path(model) if model else default_model_dir()
    if not has_model(mdir):
        if model:
            raise ReadtalkError(
                f"{mdir} is not a model folder (needs vae, speechae and dit .safetensors)"
            )
        return {"model": None}
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.from_pretrained(mdir, device=device)
    made = {}
    if image is None or audio is None:
        made = synth_inputs(out, pipe.size, seed)
    src_image = image if image is not None else made["image"]
    src_audio = audio if audio is not None else made["audio"]
    res = pipe.generate_to_file(
        src_image, src_audio, out / "demo.mp4", seed=seed, progress=progress
    )
    summary = {
        "model": str(mdir),
        "video": str(res.path),
        "frames": res.num_frames,
        "audio_seconds": len(res.audio) / SAMPLE_RATE,
        "seconds": res.seconds,
        "rtf": res.seconds / max(len(res.audio) / SAMPLE_RATE, 1e-9),
        "text": made.get("text", ""),
    }
    if made and image is None and audio is None:
        shutil.copy(made["truth"], out / "truth.mp4")
        summary["truth"] = str(out / "truth.mp4")
    return summary


def synth_sample(out: str | Path, clips: int, size: int, seed: int) -> list[dict]:
    """Without a model: a small SynthTalk sample in ``out`` and its overview ``sheet.png``."""
    out = Path(out)
    if (out / "synthtalk.json").is_file():  # an earlier sample: replace it
        shutil.rmtree(out)
    generate(SynthConfig(clips=clips, size=size, seed=seed), out, progress=True)
    records = load_manifest(out)
    write_image(out / "sheet.png", dataset_sheet(records, per_clip=6))
    return records
