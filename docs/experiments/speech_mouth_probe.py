"""How much of the mouth's openness the speech the DiT hears can tell (a SynthTalk diagnostic).

    .venv/bin/python docs/experiments/speech_mouth_probe.py --cache cache/st320-roll

A rolling latent cache holds, per 57-frame window, each latent's speech code (the raw
SpeechAE: the Whisper-tiny features of the latent's own frames, 2 x 384 per frame, each from
its latent's 2-s encoder pass) and SynthTalk's exact lip gap per frame. The two windows of a
clip (frames 0-56 and 57-113) are joined into one 114-frame sequence of per-frame features.
Probes fitted on the training clips map each frame's features (with ``K`` frames either side)
to its lip gap:

* ridge regression on the features of frames ``[f - K, f + K]``;
* a small temporal convolution network (the same inputs, trained with Adam).

Printed: the mean over the held-out clips of the Pearson r between the probe's gap and the true
gap over each clip's 114 frames. That is the measure `mouth_corr` takes on a generated video
(the mouth reader's gap against the true gap), so it can be set beside the DiT's 0.705 (free
running), 0.738 (teacher forced) and the reconstructions' 0.865 (docs/results.md section 8).
A probe well above the DiT says the speech holds the mouth and the DiT does not draw it; a probe
near it says the speech features are the limit.

With ``--dit``, two more ridge read-outs of each latent's 8 gaps (latents 1-7 of a window), on
what that DiT release sees: its projected speech tokens (``audio_context``: what its
cross-attention reads) and the cache's true normalised latents, whole and the 2 x 2 cells
around the mouth (rows 4-5, columns 3-4).

    .venv/bin/python docs/experiments/speech_mouth_probe.py --cache cache/st320-roll \
        --dit src/readtalk/assets/demo/dit.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from readtalk.data.synthtalk.mouth_reader import pearson

FRAME_DIM = 768
LATENT_FRAMES = 8


def clip_sequences(cache: Path) -> dict[str, dict]:
    """``{split: {"x": (n, T, 768), "y": (n, T)}}``: each clip's windows joined in time."""
    meta = json.loads((cache / "meta.json").read_text())
    clips: dict[tuple[str, str], dict[int, tuple]] = {}
    for name in meta["shards"]:
        s = torch.load(cache / name, weights_only=False)
        for i, cid in enumerate(s["ids"]):
            audio = s["audio"][i].float()  # (latents, 8 * 768)
            frames = [audio[0, :FRAME_DIM]]  # latent 0: frame 0 alone (its rows repeat it)
            frames += list(audio[1:].reshape(-1, LATENT_FRAMES, FRAME_DIM).reshape(-1, FRAME_DIM))
            x = torch.stack(frames)
            clips.setdefault((s["split"][i], cid), {})[int(s["start"][i])] = (x, s["gap"][i])
    out: dict[str, dict] = {}
    for (split, _), parts in sorted(clips.items()):
        xs = torch.cat([parts[k][0] for k in sorted(parts)])
        ys = torch.cat([parts[k][1] for k in sorted(parts)])
        d = out.setdefault(split, {"x": [], "y": []})
        d["x"].append(xs)
        d["y"].append(ys)
    return {k: {"x": torch.stack(v["x"]), "y": torch.stack(v["y"])} for k, v in out.items()}


def stacked(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n, T, D) -> (n, T, (2k + 1) D): each frame with ``k`` frames either side (edges repeat)."""
    t = x.shape[1]
    idx = (torch.arange(t)[:, None] + torch.arange(-k, k + 1)[None]).clamp(0, t - 1)
    return x[:, idx].flatten(2)


def clip_r(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over clips of Pearson r over time (clips with a constant side left out)."""
    rs = [pearson(p.numpy(), t.numpy()) for p, t in zip(pred, y, strict=True)]
    return float(np.nanmean(rs))


def ridge(train: dict, test: dict, k: int, lams: list[float]) -> dict[float, tuple[float, float]]:
    """Train and held-out r of a ridge read-out from ``x`` (n, T, D) to ``y`` (n, T) or (n, T,
    outputs; ``T * outputs`` frames in time order), for each penalty in ``lams``."""
    xtr, xte = stacked(train["x"], k).double(), stacked(test["x"], k).double()
    mu, sd = xtr.mean((0, 1)), xtr.std((0, 1)) + 1e-6
    a = ((xtr - mu) / sd).flatten(0, 1)
    ytr = train["y"].double()
    b = (ytr[..., None] if ytr.dim() == 2 else ytr).flatten(0, 1)  # (n T, outputs)
    ym = b.mean(0)
    gram, rhs = a.T @ a, a.T @ (b - ym)
    out = {}
    for lam in lams:
        w = torch.linalg.solve(gram + lam * len(a) * torch.eye(len(gram), dtype=gram.dtype), rhs)
        fit = (((xtr - mu) / sd) @ w + ym).float().flatten(1)
        pred = (((xte - mu) / sd) @ w + ym).float().flatten(1)
        out[lam] = (clip_r(fit, train["y"].flatten(1)), clip_r(pred, test["y"].flatten(1)))
    return out


class ConvProbe(nn.Module):
    def __init__(self, k: int, width: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(FRAME_DIM, width, 1),
            nn.GELU(),
            nn.Dropout(0.2),
            nn.Conv1d(width, width, 2 * k + 1, padding=k, padding_mode="replicate"),
            nn.GELU(),
            nn.Conv1d(width, width, 5, padding=2, padding_mode="replicate"),
            nn.GELU(),
            nn.Conv1d(width, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2))[:, 0]


def conv(train: dict, test: dict, k: int, steps: int, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    mu, sd = train["x"].mean((0, 1)), train["x"].std((0, 1)) + 1e-6
    xtr, xte = (train["x"] - mu) / sd, (test["x"] - mu) / sd
    scale = train["y"].std()
    model = ConvProbe(k)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = torch.from_numpy(rng.choice(len(xtr), 32, replace=False))
        loss = ((model(xtr[i]) - train["y"][i] / scale) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return clip_r(model(xtr), train["y"]), clip_r(model(xte), test["y"])


def latent_rows(cache: Path, dit: str) -> dict[str, dict[str, torch.Tensor]]:
    """Per split: (clips, 14, dim) read-out inputs of latents 1-7 of both windows, ``y`` (clips,
    14, 8) their gaps; inputs ``tokens`` (the DiT's speech context), ``latent``, ``mouth``."""
    from readtalk.dit.release import load_dit_release

    rel = load_dit_release(dit)
    model = rel.model.float().eval()
    view = (1, -1, 1, 1, 1)
    rows: dict[str, dict[str, dict[int, dict]]] = {"train": {}, "test": {}}
    for name in json.loads((cache / "meta.json").read_text())["shards"]:
        s = torch.load(cache / name, weights_only=False)
        b, f = s["audio"].shape[:2]
        with torch.no_grad():
            tokens = model.audio_context(s["audio"].float())[0].reshape(b, f, -1)
        z = (s["latent"].float() - rel.latent_mean.view(view)) / rel.latent_std.view(view)
        z = z.transpose(1, 2)  # (b, f, C, h, w)
        for i, cid in enumerate(s["ids"]):
            rows[s["split"][i]].setdefault(cid, {})[int(s["start"][i])] = {
                "tokens": tokens[i, 1:],
                "latent": z[i, 1:].flatten(1),
                "mouth": z[i, 1:, :, 4:6, 3:5].flatten(1),
                "y": s["gap"][i][1:].reshape(f - 1, LATENT_FRAMES),
            }
    out: dict[str, dict[str, torch.Tensor]] = {}
    for split, clips in rows.items():
        joined = [
            {k: torch.cat([p[s][k] for s in sorted(p)]) for k in p[0]} for p in clips.values()
        ]
        out[split] = {k: torch.stack([c[k] for c in joined]) for k in joined[0]}
    return out


def readouts(rows: dict, lams: list[float]) -> None:
    for key in ("tokens", "latent", "mouth"):
        train = {"x": rows["train"][key], "y": rows["train"]["y"]}
        test = {"x": rows["test"][key], "y": rows["test"]["y"]}
        for lam, (fit, held) in ridge(train, test, 0, lams).items():
            dim = train["x"].shape[-1]
            print(
                f"read-out of {key} ({dim}) lambda={lam:g}: train r {fit:.3f}, held-out {held:.3f}"
            )


@torch.no_grad()
def rolling_steps(cache: Path, paths: list[str]) -> None:
    from readtalk.data.cache import CachedLatents
    from readtalk.diffusion import add_noise
    from readtalk.dit.release import load_dit_release
    from readtalk.train.mouth_probe import fit_mouth_probe, mouth_loss, probe_gaps

    train, test = CachedLatents(cache, "train"), CachedLatents(cache, "test")
    probe = fit_mouth_probe(train.normalize(train.latent), train.gap)
    b = test.get(list(range(len(test))))
    z0, ref, speech = b["latent"], b["ref"], b["audio"]
    n = len(z0)
    for path in paths:
        model = load_dit_release(path).model.float().eval()
        row = []
        for tv in (0.5, 0.75, 1.0):
            for audio in (True, False):
                gen = torch.Generator().manual_seed(0)
                errs, est, true = [], [], []
                for j in range(2, z0.shape[2]):
                    x = z0[:, :, j - 2 : j + 1]
                    noise = torch.randn(x.shape, generator=gen)
                    t = torch.tensor([0.0, 0.35, 0.35, tv]).expand(n, 4)
                    zt = add_noise(x, noise, t[:, 1:])
                    keep = None if audio else torch.zeros(n, dtype=torch.bool)
                    v = model(zt, t, ref, speech[:, j - 2 : j + 1], audio_mask=keep)
                    new = torch.ones(n, 1, dtype=torch.bool)
                    errs.append(float(mouth_loss(v[:, :, 2:], (noise - x)[:, :, 2:], probe, new)))
                    est.append(probe_gaps((zt - tv * v)[:, :, 2:], probe)[:, 0])
                    true.append(probe_gaps(x[:, :, 2:], probe)[:, 0])
                r = clip_r(torch.stack(est, 1).flatten(1), torch.stack(true, 1).flatten(1))
                tag = "" if audio else " no speech"
                row.append(f"t {tv}{tag}: mouth loss {np.mean(errs):.3f}, r {r:.3f}")
        print(f"{path}:\n  " + "\n  ".join(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--context", default="0,2,4", help="K: frames either side, comma-separated")
    p.add_argument("--lambdas", default="0.01,0.1,1,10")
    p.add_argument("--steps", type=int, default=1500, help="conv probe's Adam steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dit", help="a DiT release: read-outs of its speech tokens and the latents")
    p.add_argument("--steps-of", nargs="+", default=[], help="DiT releases: their rolling steps")
    a = p.parse_args()
    if a.steps_of:
        rolling_steps(Path(a.cache), a.steps_of)
        return
    data = clip_sequences(Path(a.cache))
    train, test = data["train"], data["test"]
    print(f"clips: {len(train['y'])} train, {len(test['y'])} test, {train['y'].shape[1]} frames")
    lams = [float(v) for v in a.lambdas.split(",")]
    for k in (int(v) for v in a.context.split(",")):
        for lam, (fit, held) in ridge(train, test, k, lams).items():
            print(f"ridge K={k} lambda={lam:g}: train r {fit:.3f}, held-out r {held:.3f}")
        fit, held = conv(train, test, k, a.steps, a.seed)
        print(f"conv  K={k}: train r {fit:.3f}, held-out r {held:.3f}", flush=True)
    if a.dit:
        readouts(latent_rows(Path(a.cache), a.dit), lams)


if __name__ == "__main__":
    main()
