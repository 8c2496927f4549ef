"""Quality parity of the runtimes: the same held-out clips generated with the torch runtime and
with the ONNX runtime (same model, seed and settings), both scored by ``readtalk eval``, and
the largest grey-level difference between the two runtimes' frames.

    python docs/experiments/runtime_parity.py --data data/st1000 --onnx models/demo-onnx \
        --clips 32 --out results/runtime-parity

The ONNX folder is what ``readtalk export --format onnx --out DIR`` writes (it holds the torch
files too, so both runtimes load from it). Output: ``OUT/parity.json`` and a printed table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from readtalk.data.manifest import load_manifest
from readtalk.eval.results import ResultsConfig, score_set
from readtalk.media import iter_frames
from readtalk.pipeline import Pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--onnx", required=True, help="folder of readtalk export --format onnx")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    records = load_manifest(a.data, "test")[: a.clips]
    cfg = ResultsConfig(clips=a.clips)
    rows = {}
    for runtime in ("torch", "onnx"):
        pipe = Pipeline.from_pretrained(a.onnx, runtime=runtime)
        rows[runtime] = score_set(pipe, records, a.data, out, runtime, cfg, progress=True)
    worst = 0
    for rec in records:
        pairs = zip(
            iter_frames(out / "torch" / f"{rec['id']}.mp4"),
            iter_frames(out / "onnx" / f"{rec['id']}.mp4"),
            strict=True,
        )
        for f_t, f_o in pairs:
            worst = max(worst, int(np.abs(f_t.astype(int) - f_o.astype(int)).max()))
    res = {"clips": len(records), "rows": rows, "max_grey_difference_after_h264": worst}
    (out / "parity.json").write_text(json.dumps(res, indent=2) + "\n")
    keys = ("mouth_corr", "psnr", "ssim", "identity", "seam_ratio", "rtf")
    print("| runtime | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, row in rows.items():
        cells = [f"{row.get(k):.4f}" if isinstance(row.get(k), float) else str(row.get(k))
                 for k in keys]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"largest grey-level difference between the runtimes' decoded mp4 frames: {worst}")


if __name__ == "__main__":
    main()
