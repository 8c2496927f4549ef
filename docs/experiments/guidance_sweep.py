"""Split-CFG scales against lip sync: generate held-out test clips at each (alpha, beta) and score.

    python docs/experiments/guidance_sweep.py --model src/readtalk/assets/demo --data data/st1000 \
        --out results/f-beta --clips 16 --steps 4 --beta 2,4,6,9,12 --alpha 2 \
        [--syncnet runs/syncnet-small/syncnet.safetensors]

Writes ``sweep.json`` (one row per setting, the same keys as ``readtalk bench results``) and prints
a Markdown table. Resumable: settings already in ``sweep.json`` are skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from readtalk.data.manifest import load_manifest
from readtalk.errors import ReadtalkError
from readtalk.eval.results import ResultsConfig, score_set
from readtalk.pipeline import Pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--alpha", default="2")
    p.add_argument("--beta", default="2,4,6,9,12")
    p.add_argument("--syncnet", default="")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    book = out / "sweep.json"
    rows = json.loads(book.read_text()) if book.is_file() else []
    pipe = Pipeline.from_pretrained(a.model)
    tests = load_manifest(a.data, "test")[: a.clips]
    cfg = ResultsConfig(syncnet=a.syncnet, seed=a.seed)
    for alpha in [float(x) for x in a.alpha.split(",")]:
        for beta in [float(x) for x in a.beta.split(",")]:
            if any(r["alpha"] == alpha and r["beta"] == beta for r in rows):
                continue
            name = f"a{alpha:g}_b{beta:g}"
            row = score_set(pipe, tests, a.data, out, name, cfg, True, steps=a.steps,
                            guidance="split", alpha=alpha, beta=beta)  # fmt: skip
            shutil.rmtree(out / name)
            rows.append({"alpha": alpha, "beta": beta, "steps": a.steps, "clips": len(tests)} | row)
            tmp = book.with_suffix(".partial")
            tmp.write_text(json.dumps(rows, indent=1))
            tmp.replace(book)
    keys = ["alpha", "beta", "mouth_corr", "sync_c", "sync_d", "identity", "psnr", "seam_ratio"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in sorted(rows, key=lambda r: (r["alpha"], r["beta"])):
        print("| " + " | ".join(f"{r.get(k):.3f}" if isinstance(r.get(k), float) else str(r.get(k))
                                for k in keys) + " |")  # fmt: skip


if __name__ == "__main__":
    try:
        main()
    except ReadtalkError as e:
        raise SystemExit(f"error: {e}") from None
