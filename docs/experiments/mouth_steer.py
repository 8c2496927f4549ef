"""Steering the mouth at sampling: each DiT step's clean-latent estimate moved along the
latent's mouth directions toward a lip gap predicted from the speech (a SynthTalk diagnostic,
docs/results.md section 8, "Steering the mouth while sampling").

    .venv/bin/python docs/experiments/mouth_steer.py --cache cache/st320-roll \\
        --model src/readtalk/assets/demo --data data/st1000 --strength 0.5 --amplify 2 \\
        --out results/steer/s05a2
    readtalk eval --pred results/steer/s05a2 --ref data/st1000 --out results/steer/eval-s05a2

Fitted on the rolling cache's training windows (latents 1-7 of each, normalised; their 8
frames' lip gaps):

* a ridge read-out ``W`` (C h w -> 8 gaps) and the latent's change per unit of gap ``F`` (the
  regression of the latent on its gaps), combined into edit rows ``E = (F W)^-1 F`` so that an
  edit by ``d E`` changes the read-out by exactly ``d``;
* a predictor of the 8 gaps from the latent's speech code (6,144 -> 256 -> 8, GELU, dropout
  0.2; AdamW, 3,000 steps of 256 latents).

While sampling, the model's velocity ``v`` at ``z_t`` gives the estimate ``x0 = z_t - t v``; it
becomes ``x0 + s (g - W x0) E`` with ``g`` the predicted gaps (their deviation from the mean gap
times ``--amplify``) and ``s`` the ``--strength``, and the velocity ``(z_t - x0') / t``. The
32 held-out clips are then generated as ``readtalk bench results`` does (seed 0, 3 steps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from readtalk.data.cache import CachedLatents
from readtalk.data.manifest import load_manifest
from readtalk.data.synthtalk.mouth_reader import pearson
from readtalk.eval.results import generate_set
from readtalk.pipeline import Pipeline
from readtalk.train.mouth_probe import latent_gap_pairs, ridge_readout


def _pairs(d: CachedLatents) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y, keep = latent_gap_pairs(d.normalize(d.latent).double(), d.gap)  # (n, C h w), (n, 8)
    a = d.audio[:, 1:].flatten(0, 1)[keep].float()  # (n, 6144)
    return x, a, y.float()


def _window_r(p: torch.Tensor, y: torch.Tensor) -> float:
    p, y = p.reshape(-1, 56), y.reshape(-1, 56)
    return float(np.nanmean([pearson(a, b) for a, b in zip(p.numpy(), y.numpy(), strict=True)]))


def fit(cache: str) -> dict:
    """The read-out, the edit rows and the speech predictor (module docstring)."""
    tr, te = CachedLatents(cache, "train"), CachedLatents(cache, "test")
    xtr, atr, ytr = _pairs(tr)
    xte, ate, yte = _pairs(te)
    w, mx, my = ridge_readout(xtr, ytr.double())  # (D, 8)
    yc = ytr.double() - my
    f = torch.linalg.solve(yc.T @ yc + 1e-6 * torch.eye(8, dtype=torch.float64), yc.T @ (xtr - mx))
    e = torch.linalg.solve(f @ w, f)  # (8, D)
    print(
        f"read-out of the latents: held-out r {_window_r(((xte - mx) @ w + my).float(), yte):.3f}"
    )
    torch.manual_seed(0)
    ma, sa = atr.mean(0), atr.std(0) + 1e-6
    net = nn.Sequential(nn.Linear(6144, 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, 8))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.05)
    ys = ytr.std()
    rng = np.random.default_rng(0)
    for _ in range(3000):
        i = torch.from_numpy(rng.choice(len(atr), 256, replace=False))
        loss = ((net((atr[i] - ma) / sa) - (ytr[i] - my.float()) / ys) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        held = _window_r(net((ate - ma) / sa) * ys + my.float(), yte)
    print(f"speech predictor: held-out r {held:.3f}")
    return {"W": w.float(), "E": e.float(), "mx": mx.float(), "my": my.float(), "ma": ma,
            "sa": sa, "ys": ys, "net": net}  # fmt: skip


def steer(pipe: Pipeline, s: dict, strength: float, amplify: float) -> None:
    """Wrap ``pipe.models.velocity`` with the steering (module docstring)."""
    velocity_of = pipe.models.velocity

    def velocity(z, t, rm, am, cond):
        v = velocity_of(z, t, rm, am, cond).float()
        b, c, f, h, w = z.shape
        tt = t[:, 1:].float().view(b, 1, f, 1, 1)
        flat = (z.float() - tt * v).transpose(1, 2).flatten(2)  # x0 estimate, (b, f, D)
        with torch.no_grad():
            g = s["net"]((cond["audio"].float() - s["ma"]) / s["sa"]) * s["ys"] * amplify
        gh = (flat - s["mx"]) @ s["W"]  # the estimate's gaps, less the mean gap
        flat = flat + strength * (g - gh) @ s["E"]
        x0 = flat.view(b, f, c, h, w).transpose(1, 2)
        return torch.where(tt > 0, (z.float() - x0) / tt.clamp_min(1e-6), v).to(v.dtype)

    pipe.models.velocity = velocity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--amplify", type=float, default=2.0)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(2)
    s = fit(a.cache)
    pipe = Pipeline.from_pretrained(a.model)
    steer(pipe, s, a.strength, a.amplify)
    recs = load_manifest(a.data, "test")[: a.clips]
    print(generate_set(pipe, recs, Path(a.out), True, seed=0, steps=a.steps))


if __name__ == "__main__":
    main()
