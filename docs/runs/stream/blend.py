"""Experiment: causal cross-fade of per-frame latents at every group start (factorised VAE)."""
import sys, numpy as np, torch
import readtalk.vae.factorised as fz
from readtalk.pipeline import Pipeline
from readtalk.media import load_audio
from readtalk.data.manifest import load_manifest, resolve
r = int(sys.argv[1]); out = sys.argv[2]
orig = fz.FactorisedVAE.unpack
def unpack(self, latent, last, first):
    prev = last
    for run in orig(self, latent, last, first):
        if prev is not None and run.shape[1] > 1 and r > 0:
            run = run.clone()
            step = prev - run[:, 0]
            for j in range(min(r, run.shape[1] - 1)):
                run[:, j] = run[:, j] + (r - j) / (r + 1) * step
        prev = run[:, -1]
        yield run
fz.FactorisedVAE.unpack = unpack
pipe = Pipeline.from_pretrained()
import pathlib; pathlib.Path(out).mkdir(parents=True, exist_ok=True)
for rec in load_manifest("data/long60", "test"):
    a = load_audio(resolve(rec, "video"))
    pipe.generate_to_file(str(resolve(rec, "ref")), a, f"{out}/{rec['id']}.mp4", progress=False)
