"""``readtalk serve``: a live avatar server (FastAPI on uvicorn; WebSocket, WebRTC, video
jobs, a browser page), and ``readtalk.serve.pipecat``, the avatar as a pipecat processor.
Transport only: the model work is the pipeline's and the session's.

    from readtalk.serve import ServeConfig, run_server
    run_server(ServeConfig(port=8000, token="secret"))

Needs the optional extra ``pip install 'readtalk[serve]'`` (``readtalk[pipecat]`` for the
pipecat processor). Protocol: docs/protocol.md. ``ServeConfig``, ``create_server`` and
``run_server`` are imported on first use (PEP 562), so that the pipecat processor does not
need the server's packages.
"""

import importlib

__all__ = ["ServeConfig", "create_server", "run_server"]

_LAZY = {
    "ServeConfig": "readtalk.serve.config",
    "create_server": "readtalk.serve.server",
    "run_server": "readtalk.serve.server",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'readtalk.serve' has no attribute {name!r}")
