"""A side-by-side contact sheet of held-out clips: the truth and any number of generated (or
reconstructed) versions of the same clips, at the same frames, with a zoom on the face.

    .venv/bin/python docs/experiments/decoder_sheet.py --data data/st1000 \\
        --video old=results/runtime-parity/torch --video new=results/sharp/model-gan/main \\
        --clips 4 --out docs/sharp_decoder_sheet.jpg

Each ``--video NAME=DIR`` is a folder of ``<clip id>.mp4`` (``readtalk bench results`` and
``readtalk eval`` layouts). Per clip one row: for each source (truth first) the whole frame at
the clip's most open true mouth, and a 2x zoom of the face centre. Column labels on top.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from readtalk.data.manifest import load_manifest, load_track, resolve
from readtalk.media import read_video


def _find(folder: Path, clip: str) -> Path:
    hits = sorted(folder.rglob(f"{clip}.mp4"))
    if not hits:
        raise SystemExit(f"no {clip}.mp4 under {folder}")
    return hits[0]


def _zoom(frame: np.ndarray) -> np.ndarray:
    """The central half of the frame (the face), scaled back to the frame's size."""
    h, w = frame.shape[:2]
    crop = frame[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
    return np.asarray(Image.fromarray(crop).resize((w, h), Image.NEAREST))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--video", action="append", default=[], help="NAME=DIR (repeatable)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sources = [s.split("=", 1) for s in a.video]
    records = load_manifest(a.data, "test")[: a.clips]
    rows = []
    for rec in records:
        gap = np.asarray(load_track(rec)["measures"]["gap"])
        truth = read_video(resolve(rec, "video"))
        vids = [truth] + [read_video(_find(Path(d), rec["id"])) for _, d in sources]
        n = min(len(v) for v in vids)
        f = int(np.argmax(gap[:n]))
        rows.append(np.concatenate([np.concatenate([v[f], _zoom(v[f])], 1) for v in vids], 1))
    sheet = np.concatenate(rows, 0)
    label_h = 22
    img = Image.new("RGB", (sheet.shape[1], sheet.shape[0] + label_h), "white")
    img.paste(Image.fromarray(sheet), (0, label_h))
    draw = ImageDraw.Draw(img)
    w2 = 2 * rows[0].shape[1] // (2 * (1 + len(sources)))  # one source's two panels
    for k, name in enumerate(["truth"] + [n for n, _ in sources]):
        draw.text((k * w2 + 6, 5), f"{name}: frame | face x2", fill="black")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    img.save(a.out, quality=90)
    print(f"wrote {a.out} ({len(records)} clips, {1 + len(sources)} sources)")


if __name__ == "__main__":
    main()
