"""``readtalk serve``: the live avatar server (the optional extra ``readtalk[serve]``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from readtalk.cli.common import add_dtype_arg, set_threads
from readtalk.errors import ReadtalkError


def import_serve():
    """``readtalk.serve``, or a one-line error naming the extra to install."""
    try:
        import readtalk.serve as serve
    except ImportError as e:
        raise ReadtalkError(
            f"readtalk serve needs the serve extra ({e.name or e} is missing): "
            "pip install 'readtalk[serve]'"
        ) from None
    return serve


def cmd_serve(a: argparse.Namespace) -> None:
    """``readtalk serve``."""
    serve = import_serve()
    from readtalk.release import default_model_dir

    set_threads(a.threads)
    token = a.token if a.token is not None else os.environ.get("READTALK_TOKEN") or None
    if a.model is None:
        print(f"using the shipped demo model ({default_model_dir()})")
    config = serve.ServeConfig(
        host=a.host, port=a.port, model=a.model, token=token, device=a.device, dtype=a.dtype,
        max_sessions=a.max_sessions, max_jobs=a.max_jobs, idle_timeout_s=a.idle_timeout,
        max_audio_seconds=a.max_audio_seconds, jobs_dir=Path(a.jobs_dir) if a.jobs_dir else None,
    )  # fmt: skip
    serve.run_server(config)


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="live avatar server: WebSocket, WebRTC, video jobs and a browser page"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="model folder (default: the demo model)")
    p.add_argument(
        "--token", default=None, help="required from clients (default: $READTALK_TOKEN; none)"
    )
    p.add_argument("--max-sessions", type=int, default=4, help="live streams at once")
    p.add_argument("--max-jobs", type=int, default=16, help="video jobs queued or running")
    p.add_argument("--max-audio-seconds", type=float, default=600.0, help="of a video job")
    p.add_argument("--idle-timeout", type=float, default=60.0, help="seconds, live streams")
    p.add_argument("--jobs-dir", default=None, help="keep job files here (default: a temp dir)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    add_dtype_arg(p)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.set_defaults(func=cmd_serve)
