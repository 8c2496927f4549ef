"""The ``readtalk`` command line: one entry point, one subcommand per job.

The parser table: each command group is one module of this package with a ``register(sub)``
that adds its subcommands. Errors a user can fix (ReadtalkError) print as one line,
``error: ...``, with exit status 2; Ctrl-C prints ``interrupted`` with status 130. Command
functions import the library when they run (the one place in readtalk where imports sit
inside functions), so that ``readtalk --help`` and argument errors are instant instead of
waiting for torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from readtalk import __version__
from readtalk.cli import bench, data, eval, finetune, generate, serve, train
from readtalk.errors import ReadtalkError, ReadtalkWarning

# the command groups, in the order `readtalk --help` lists them
GROUPS = (generate, data, train, finetune, eval, bench, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readtalk", description="readtalk: real-time audio-driven talking-head generation"
    )
    parser.add_argument("--version", action="version", version=f"readtalk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """readtalk's own warnings as one line; others as Python shows them."""
    if issubclass(category, ReadtalkWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch's OpenMP threads sleep when idle instead of spinning (read when torch loads, so
    # before any command imports it): with spinning threads, anything else on the cores (the
    # mp4 encoder, a server's event loop, another process) stalls torch's 2-thread work up
    # to tenfold; alone it is as fast or faster (docs/speed.md). An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    warnings.showwarning = _warning_line
    try:
        args.func(args)
    except ReadtalkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
