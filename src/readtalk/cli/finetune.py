"""``readtalk finetune``: the model fine-tuned on one person's videos (docs/finetune.md)."""

from __future__ import annotations

import argparse


def cmd_finetune(a: argparse.Namespace) -> None:
    from readtalk.finetune import finetune, format_report

    report = finetune(
        a.videos,
        a.out,
        base=a.base,
        minutes=a.minutes,
        resume=a.resume,
        progress=not a.quiet,
        threads=a.threads,
    )
    print(format_report(report))
    print(f"  report.json in {a.out}; try it: readtalk generate --model {report['model']} ...")


def register(sub) -> None:
    """``readtalk finetune`` on the top-level subparsers."""
    p = sub.add_parser(
        "finetune", help="fine-tune the model on one person's videos (prepare, VAE, cache, DiT)"
    )
    p.add_argument("--videos", required=True, help="folder of videos of ONE person, with speech")
    p.add_argument("--out", required=True, help="output folder (new, or one to --resume)")
    p.add_argument(
        "--from",
        dest="base",
        default=None,
        metavar="MODEL",
        help="model folder to start from (default: the shipped demo model)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=60.0,
        help="time budget of the whole run; the training stages get what the others leave",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune)
