"""``readtalk synth | sheet | mouth-check | prepare | cache``: datasets, their checks, and the
latent cache training reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_synth_args(p: argparse.ArgumentParser, clips: int) -> None:
    p.add_argument("--clips", type=int, default=clips, help="number of clips")
    p.add_argument("--size", type=int, default=256, help="frame size in pixels (multiple of 32)")
    p.add_argument(
        "--frames", type=int, default=121, help="frames per clip, 8k+1 (121 = 4.84 s at 25 fps)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--identities",
        type=int,
        default=0,
        help="number of distinct people (default: one per 8 clips, at least 2)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="fraction of identities held out as the test split",
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument(
        "--any-length",
        action="store_true",
        help="allow frame counts that are not 8k+1 (long evaluation clips)",
    )
    p.add_argument("--crf", type=int, default=18, help="H.264 quality (lower is better)")


def synth_config(a: argparse.Namespace):
    from readtalk.data.synthtalk import SynthConfig

    return SynthConfig(
        clips=a.clips,
        size=a.size,
        frames=a.frames,
        seed=a.seed,
        identities=a.identities,
        test_fraction=a.test_fraction,
        workers=a.workers,
        any_length=a.any_length,
        crf=a.crf,
    )


def cmd_synth(a: argparse.Namespace) -> None:
    from readtalk.data.synthtalk import generate

    out = generate(synth_config(a), a.out, progress=not a.quiet)
    summary = json.loads((out / "synthtalk.json").read_text())
    n = summary["clips"]
    print(
        f"wrote {n} clip{'s' * (n != 1)} ({summary['train']} train, {summary['test']} test, "
        f"{summary['identities']} identities, {summary['hours'] * 60:.1f} min of video) to "
        f"{out} in {summary['seconds']:.1f} s ({summary['clips_per_second']:.2f} clips/s)"
    )


def cmd_sheet(a: argparse.Namespace) -> None:
    from readtalk.data.manifest import load_manifest
    from readtalk.data.sheet import dataset_sheet
    from readtalk.media import write_image

    records = load_manifest(a.data, a.split)[: a.clips]
    write_image(a.out, dataset_sheet(records, a.per_clip))
    print(f"wrote {a.out}: {len(records)} clips, reference portrait then {a.per_clip} frames each")


def cmd_mouth_check(a: argparse.Namespace) -> None:
    from readtalk.data.synthtalk.mouth_reader import reader_agreement

    res = reader_agreement(
        a.data, None if a.split == "all" else a.split, a.clips, progress=not a.quiet
    )
    print(f"mouth reader on {res['clips']} clips, {res['frames']} frames ({a.split} split):")
    print(f"  openness Pearson (pooled)        {res['open_pearson']:.4f}")
    print(
        f"  openness Pearson (per-clip mean) {res['open_pearson_clip_mean']:.4f} "
        f"(min {res['open_pearson_clip_min']:.4f})"
    )
    print(f"  openness vs parameter (pooled)   {res['open_pearson_param']:.4f}")
    print(f"  gap MAE (fraction of frame)      {res['gap_mae']:.5f}")
    print(f"  width Pearson (open frames)      {res['width_pearson']:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


def cmd_prepare(a: argparse.Namespace) -> None:
    from readtalk.data.prepare import PrepareConfig, format_summary, prepare

    cfg = PrepareConfig(
        size=a.size,
        frames=a.frames,
        workers=a.workers,
        detect_every=a.detect_every,
        margin=a.margin,
        smooth=a.smooth,
        max_upscale=a.max_upscale,
        test_fraction=a.test_fraction,
    )
    summary = prepare(a.videos, a.out, cfg, progress=not a.quiet, debug=a.debug)
    print(format_summary(summary, a.out))
    print(f"  manifest.jsonl, rejected.jsonl and prepare.json in {a.out}")


def _add_prepare(sub) -> None:
    """``readtalk prepare``."""
    from readtalk.data.prepare import PrepareConfig

    d = PrepareConfig()
    p = sub.add_parser("prepare", help="turn a folder of talking videos into a training dataset")
    p.add_argument("--videos", required=True, help="folder of videos (subfolders: one per person)")
    p.add_argument("--out", required=True, help="dataset folder (new, or an earlier run to resume)")
    p.add_argument("--size", type=int, default=d.size, help="frame size (multiple of 32)")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per clip, 8k+1")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--detect-every", type=int, default=d.detect_every, help="detector stride")
    p.add_argument("--margin", type=float, default=d.margin, help="crop side / face size")
    p.add_argument(
        "--smooth",
        type=float,
        default=d.smooth,
        help="crop path smoothing, seconds (0: one fixed crop per clip)",
    )
    p.add_argument(
        "--max-upscale", type=float, default=d.max_upscale, help="drop smaller faces than this"
    )
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="of identities")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="internal errors with their traces")
    p.set_defaults(func=cmd_prepare)


def cmd_cache(a: argparse.Namespace) -> None:
    from readtalk.data.cache import CacheConfig, build_cache

    cfg = CacheConfig(
        data=a.data,
        vae=a.vae,
        speech=a.speech,
        frames=a.frames,
        size=a.size,
        front_end=a.front_end,
        whisper=a.whisper or "",
        shard_size=a.shard_size,
        latents_from=a.latents_from or "",
        augment=a.augment,
        augment_seed=a.augment_seed,
        speech_context=a.speech_context,
        speech_lookahead=a.speech_lookahead,
    )
    meta_path = build_cache(cfg, a.out, progress=not a.quiet, device=a.device)
    meta = json.loads(meta_path.read_text())
    w = meta["windows"]
    print(
        f"wrote {a.out}: {w['train']} train + {w['test']} test windows of {cfg.frames} frames "
        f"(latent {tuple(meta['latent_shape'])}, codes {meta['code_dim']}-d, "
        f"{meta['skipped_short']} clips too short skipped)"
    )


def _add_cache(sub) -> None:
    """``readtalk cache``."""
    p = sub.add_parser("cache", help="encode a dataset once into latent / speech-code shards")
    p.add_argument("--data", required=True, help="dataset folder with manifest.jsonl")
    p.add_argument("--vae", default="", help="vae.safetensors (optional with --latents-from)")
    p.add_argument("--speech", required=True, help="speechae.safetensors or its run folder")
    p.add_argument("--out", required=True, help="cache folder (new, or one to resume)")
    p.add_argument("--frames", type=int, default=121, help="window length, 8k+1")
    p.add_argument("--size", type=int, default=0, help="frame size in pixels (0: native)")
    p.add_argument(
        "--front-end",
        choices=("whisper", "logmel"),
        default="whisper",
        help="speech features the SpeechAE was trained on",
    )
    p.add_argument("--whisper", default=None, help="Whisper-tiny weights (see train speech)")
    p.add_argument("--shard-size", type=int, default=64, help="windows per shard")
    p.add_argument(
        "--latents-from",
        default=None,
        help="a finished cache of the same windows: reuse its latents, compute only speech codes",
    )
    p.add_argument(
        "--augment",
        type=float,
        default=0.0,
        help="fraction of clips whose speech is made to sound like another voice, room or "
        "microphone (timing kept; docs/stage1.md, Speech augmentation)",
    )
    p.add_argument("--augment-seed", type=int, default=0, help="which clips, and how")
    p.add_argument(
        "--speech-context",
        type=int,
        default=0,
        help="frames of audio per latent for the rolling schedule's per-latent speech codes "
        "(e.g. 50; 0: one code per window's own audio, the clip schedule; docs/streaming.md)",
    )
    p.add_argument(
        "--speech-lookahead",
        type=int,
        default=2,
        help="frames of audio after a latent that its code hears (rolling schedule)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache)


def register(sub) -> None:
    """The data commands on the top-level subparsers."""
    p = sub.add_parser("synth", help="write a SynthTalk dataset (speech, faces, ground truth)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    add_synth_args(p, clips=8)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("sheet", help="contact sheet (PNG) of a dataset's clips")
    p.add_argument("--data", required=True, help="dataset folder with manifest.jsonl")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--per-clip", type=int, default=8, help="frames shown per clip")
    p.add_argument("--split", choices=("train", "test"), default=None)
    p.set_defaults(func=cmd_sheet)

    p = sub.add_parser(
        "mouth-check", help="agreement of the SynthTalk mouth reader with the ground truth"
    )
    p.add_argument("--data", required=True, help="SynthTalk dataset folder")
    p.add_argument("--split", choices=("train", "test", "all"), default="test")
    p.add_argument("--clips", type=int, default=0, help="at most this many clips (0: all)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_mouth_check)
    _add_prepare(sub)
    _add_cache(sub)
