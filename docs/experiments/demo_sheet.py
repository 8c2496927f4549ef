"""README's picture: the shipped demo model's output beside SynthTalk's truth for the same
identity and sentence (readtalk demo --seed 0), 8 frames evenly spaced.

    .venv/bin/python docs/experiments/demo_sheet.py [OUT.png]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from readtalk.demo import run_demo
from readtalk.media import contact_sheet, read_video, write_image

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/demo_vs_truth.jpg")
with tempfile.TemporaryDirectory() as tmp:
    res = run_demo(tmp, seed=0, progress=False)
    gen, truth = read_video(res["video"]), read_video(res["truth"])
picks = np.linspace(0, min(len(gen), len(truth)) - 1, 8).round().astype(int)
write_image(out, contact_sheet([*gen[picks], *truth[picks]], cols=8))
print(f"wrote {out}: frames {picks.tolist()} of {len(gen)}; said {res['text']!r}")
