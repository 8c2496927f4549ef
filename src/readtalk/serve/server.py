"""Running the application: ``run_server`` (``readtalk serve``, in the foreground, until
SIGINT/SIGTERM) and ``BackgroundServer`` (a server on a free loopback port in a thread, for
tests and ``readtalk bench serve``)."""

from __future__ import annotations

import sys
import threading
import time

import uvicorn
from fastapi import FastAPI

from readtalk.errors import ReadtalkError
from readtalk.serve.app import create_app
from readtalk.serve.config import ServeConfig
from readtalk.serve.engine import Engine

__all__ = ["BackgroundServer", "create_server", "run_server"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def create_server(config: ServeConfig, engine: Engine | None = None) -> uvicorn.Server:
    """A uvicorn server for ``config`` (the model loaded now unless ``engine`` is given)."""
    app: FastAPI = create_app(engine or Engine.load(config))
    uv = uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", lifespan="on",
        ws_max_size=max(config.max_message_bytes, config.max_start_bytes) + 1024,
        timeout_graceful_shutdown=30, ws_ping_interval=20, ws_ping_timeout=20,
    )  # fmt: skip
    return uvicorn.Server(uv)


def run_server(config: ServeConfig) -> None:
    """Serve until interrupted (SIGINT/SIGTERM: running jobs are cancelled cleanly)."""
    if config.host not in LOOPBACK and config.token is None:
        print(
            f"warning: serving on {config.host} with no token: anyone who reaches this port "
            "can use the model (give --token or READTALK_TOKEN)",
            file=sys.stderr,
        )
    server = create_server(config)
    url = f"http://{config.host}:{config.port}/"
    print(f"readtalk serve: {url} (Ctrl-C to stop)", file=sys.stderr)
    server.run()


class BackgroundServer:
    """A server in a daemon thread on a free port (``with BackgroundServer(engine) as s:``
    ``s.url``)."""

    def __init__(self, engine: Engine) -> None:
        self.server = create_server(engine.config.replace(host="127.0.0.1", port=0), engine)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ReadtalkError("the background server did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
