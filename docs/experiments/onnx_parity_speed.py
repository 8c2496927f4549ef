"""The onnxruntime path against torch on one model (docs/onnx.md): the largest difference of
the generated uint8 frames for the same seed, and the time of one DiT call with Split-CFG's
batch of 3, of decoding a clip's frames and of a whole generation.

    python docs/experiments/onnx_parity_speed.py [--model DIR] [--onnx DIR] [--threads 2]

``--onnx``: an export of ``--model`` (``readtalk export --format onnx``); default: exported
here into a temporary folder (and the export timed). Times are the best of ``--repeats`` after
a warm-up (the least disturbed by other load on the machine); generations run once each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from readtalk.bench import processor_name
from readtalk.demo import demo_portrait
from readtalk.live import speech_for
from readtalk.onnx_runtime import export_onnx
from readtalk.pipeline import Pipeline
from readtalk.release import default_model_dir


def _timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def _speeds(pipes: dict[str, Pipeline], repeats: int) -> dict[str, dict[str, float]]:
    ref = next(iter(pipes.values()))
    st, vae = ref.default_settings, ref.vae
    f, tf = st.clip_latents(vae.temporal_factor), vae.temporal_factor
    side = ref.size // vae.spatial_factor
    cfg = ref.dit.cfg
    g = torch.Generator().manual_seed(0)
    b, c = 3, cfg.latent_channels
    t = torch.rand(b, 1 + f, generator=g)
    t[:, 0] = 0
    x, r = torch.randn(b, c, f, side, side, generator=g), torch.randn(b, c, 1, side, side)
    codes = torch.randn(b, f, cfg.audio_dim, generator=g)
    masks = torch.tensor([False, True, True]), torch.tensor([False, False, True])  # Split-CFG
    args = (x, t, r, codes, *masks)
    frames = 1 + tf * (f - 1)
    s = torch.randn(1, frames, c, side, side, generator=g)  # standardised per-frame latents
    latent = torch.randn(1, c, f, side, side, generator=g)
    out = {}
    for name, pipe in pipes.items():
        out[name] = {
            "dit_b3": _timed(lambda p=pipe: p.dit(*args), repeats),
            f"decode_frames_{frames}": _timed(lambda p=pipe: p.vae.decode_frames(s), repeats),
            f"decode_{f}_latents": _timed(lambda p=pipe: p.vae.decode(latent), repeats),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_model_dir()))
    p.add_argument("--onnx", default=None, help="an ONNX export of --model (default: made here)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0, help="speech of the parity run")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = a.onnx
        if onnx_dir is None:
            onnx_dir = Path(tmp) / "onnx"
            t0 = time.perf_counter()
            export_onnx(a.model, onnx_dir)
            print(f"export: {time.perf_counter() - t0:.1f} s")
        pipes = {
            "torch": Pipeline.from_pretrained(a.model),
            "onnx": Pipeline.from_pretrained(onnx_dir, runtime="onnx"),
        }
        portrait = demo_portrait(pipes["torch"].size, a.seed)
        speech = speech_for(a.seconds, a.seed)
        res = {k: p(portrait, speech, seed=a.seed, progress=False) for k, p in pipes.items()}
        diff = np.abs(res["torch"].frames.astype(np.int16) - res["onnx"].frames.astype(np.int16))
        print(
            f"{processor_name()}, {a.threads} threads; {len(speech) / 16000:.2f} s of speech, "
            f"{res['torch'].num_frames} frames, {res['torch'].clips} clips, "
            f"{res['torch'].settings.steps} steps"
        )
        print(
            f"frames onnx vs torch: max {diff.max()} grey levels, mean {diff.mean():.4f}, "
            f"{(diff > 0).mean() * 100:.2f}% of values differ"
        )
        for k, r in res.items():
            print(f"generation {k}: {r.seconds:.2f} s (real-time factor {r.realtime_factor:.2f})")
        speeds = _speeds(pipes, a.repeats)
        print(f"{'best of ' + str(a.repeats):24s} {'torch':>9s} {'onnx':>9s} {'ratio':>7s}")
        for key in speeds["torch"]:
            t, o = speeds["torch"][key], speeds["onnx"][key]
            print(f"{key:24s} {t * 1e3:7.1f}ms {o * 1e3:7.1f}ms {t / o:6.2f}x")


if __name__ == "__main__":
    main()
