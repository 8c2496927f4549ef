"""The dataset layout every training and evaluation command reads.

A dataset folder holds ``manifest.jsonl``: one JSON object per clip with at least ``id``,
``split`` ("train" or "test") and the paths, relative to the folder, of ``video`` (mp4 with
audio) and ``ref`` (the reference portrait); SynthTalk adds ``track`` (JSON ground truth:
per-frame mouth, pose and blink), which real footage (``readtalk prepare``) does not have. SynthTalk
(``readtalk synth``) and prepared footage (``readtalk prepare``) write the same layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from readtalk.errors import ReadtalkError
from readtalk.media import fit_size, read_image

REQUIRED = ("id", "split", "video", "ref")


def load_manifest(root: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Read and check ``root/manifest.jsonl``; optionally keep one split.

    Each record gets an extra key ``root`` (the dataset folder) so paths can be resolved with
    ``resolve(record, "video")``. Raises ReadtalkError for a missing or malformed manifest.
    """
    root = Path(root)
    path = root / "manifest.jsonl"
    if not root.is_dir():
        raise ReadtalkError(f"dataset folder not found: {root}")
    if not path.is_file():
        raise ReadtalkError(f"{root} is not a dataset: no manifest.jsonl")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReadtalkError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            missing = [k for k in REQUIRED if k not in rec]
            if missing:
                raise ReadtalkError(f"{path}:{n}: missing keys {', '.join(missing)}")
            rec["root"] = str(root)
            records.append(rec)
    if split is not None:
        if split not in ("train", "test"):
            raise ReadtalkError(f"split must be 'train' or 'test', got {split!r}")
        records = [r for r in records if r["split"] == split]
    if not records:
        raise ReadtalkError(f"{path} lists no clips" + (f" in split {split!r}" if split else ""))
    return records


def resolve(record: dict, key: str) -> Path:
    """Absolute path of one of a record's files."""
    return Path(record["root"]) / record[key]


def load_track(record: dict) -> dict:
    """A record's ground-truth track; ``{}`` for a record without one (real footage)."""
    if not record.get("track"):
        return {}
    path = resolve(record, "track")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReadtalkError(f"track file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ReadtalkError(f"track file {path} is not valid JSON ({e.msg})") from None


def load_reference(record: dict, size: int) -> np.ndarray:
    """A record's reference portrait, uint8 (size, size, 3), fitted as its clip's frames are."""
    return fit_size(read_image(resolve(record, "ref"))[None], size)[0]


def clip_audio_path(rec: dict) -> Path:
    """The lossless wav when the dataset has one, else the video's own audio track."""
    return resolve(rec, "audio") if rec.get("audio") else resolve(rec, "video")
