"""The portrait check (Pipeline.portrait_fit) on the demo model.

1. ``--record``: the statistics of the demo model's 113 training identities (SynthTalk seed 0,
   125 identities less the 12 held out: ``readtalk synth --clips 1000 --seed 0``), written to
   the demo model's pipeline.json ("portrait"), as ``readtalk export --portraits`` does.
2. The check on 50 held-out SynthTalk portraits (the identities readtalk demo draws from, seeds
   1000+, none in training) and on every real photo in scikit-image's data, framed as the
   pipeline frames any portrait (the centre square, resized).

    .venv/bin/python docs/experiments/portrait_fit.py [--record]
"""

import json
import sys

import numpy as np
import skimage.data as sd

from readtalk import Pipeline
from readtalk.data.synthtalk import SynthConfig, reference_portrait
from readtalk.data.synthtalk.dataset import held_out_identities
from readtalk.release import default_model_dir

pipe = Pipeline.from_pretrained()
if "--record" in sys.argv:
    cfg = SynthConfig(clips=1000, size=256, frames=121, seed=0)
    train = [i for i in range(cfg.n_identities) if i not in held_out_identities(cfg)]
    stats = pipe.portrait_statistics(reference_portrait(0, i, pipe.size) for i in train)
    pj = default_model_dir() / "pipeline.json"
    pj.write_text(json.dumps({**json.loads(pj.read_text()), "portrait": stats}, indent=2) + "\n")
    print(f"recorded {stats} in {pj}")
    pipe = Pipeline.from_pretrained()

fits = [pipe.portrait_fit(reference_portrait(1000 + s, 0, pipe.size)) for s in range(50)]
f0 = fits[0]
print(f"recorded: psnr >= {f0.psnr_min} dB, saturation {f0.saturation_range}")
print(f"SynthTalk held out (50): psnr {min(f.psnr for f in fits):.2f}..{max(f.psnr for f in fits):.2f}"
      f" dB, saturation {min(f.saturation for f in fits):.3f}..{max(f.saturation for f in fits):.3f};"
      f" warned {sum(not f.ok for f in fits)}/50")
real = {}
for name in sd.__all__:
    if name.startswith("_") or name in ("download_all", "lfw_subset", "data_dir"):
        continue
    try:
        img = np.asarray(getattr(sd, name)())
    except Exception:  # a dataset that needs a download (pooch), or not one image
        continue
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or min(img.shape[:2]) < 64:
        continue
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        continue
    real[name] = pipe.portrait_fit(pipe.prepare_image(img))
for name, f in sorted(real.items(), key=lambda kv: kv[1].psnr):
    print(f"  {name:22s} {f.psnr:6.2f} dB  saturation {f.saturation:.3f}  "
          f"{'ok' if f.ok else 'warned'}")
print(f"real photos: warned {sum(not f.ok for f in real.values())}/{len(real)}")
