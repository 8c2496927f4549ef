"""docs/finetune.md's contact sheet: frames generated from a fine-tuned run's held-out
reference portrait, with the base model (top) and the fine-tuned model (middle), beside the
held-out clip's true frames (bottom). The speech is espeak-ng's (readtalk.live.speech_for).

    .venv/bin/python docs/experiments/finetune_sheet.py RUN_DIR OUT.jpg
"""

import sys
import warnings
from pathlib import Path

import numpy as np

from readtalk import Pipeline
from readtalk.data.manifest import load_manifest, resolve
from readtalk.live import speech_for
from readtalk.media import contact_sheet, read_image, read_video, write_image

run, out = Path(sys.argv[1]), Path(sys.argv[2])
rec = load_manifest(run / "data", split="test")[0]
ref, truth = read_image(resolve(rec, "ref")), read_video(resolve(rec, "video"))
speech = speech_for(4.0, seed=3)
rows = []
for model in (None, run / "model"):
    pipe = Pipeline.from_pretrained(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the base model warns about this portrait: we know
        frames = pipe(ref, speech, seed=0, progress=False).frames
    picks = np.linspace(0, len(frames) - 1, 6).round().astype(int)
    rows += list(frames[picks])
picks = np.linspace(0, len(truth) - 1, 6).round().astype(int)
rows += [pipe.prepare_image(f) for f in truth[picks]]
write_image(out, contact_sheet(rows, cols=6))
print(f"wrote {out}")
