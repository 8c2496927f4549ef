"""``ServeConfig``: where the server listens, who may use it, and every limit it enforces."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from readtalk.errors import ReadtalkError


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``readtalk serve`` (docs/serving.md). Every limit is enforced with a clear
    error (HTTP status or WebSocket close code), never a crash.

    ``token``: required from every client (``?token=`` or ``Authorization: Bearer``) when set;
    None: no authentication (the default host is loopback only). ``model``: model folder
    (None: the shipped demo model). ``jobs_dir``: where ``POST /v1/videos`` keeps its files
    (None: a temporary folder removed at exit)."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None
    token: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    max_sessions: int = 4  # live streams (WebSocket + WebRTC) at once; more: 503 / close 1013
    max_jobs: int = 16  # queued + running video jobs; more: 503
    max_upload_bytes: int = 50 * 2**20  # a whole POST /v1/videos request
    max_image_pixels: int = 4096 * 4096
    max_audio_seconds: float = 600.0  # of a video job
    max_stream_seconds: float = 4 * 3600.0  # of speech in one live stream
    max_message_bytes: int = 2**20  # one binary WebSocket message (PCM)
    max_start_bytes: int = 16 * 2**20  # the start message (with its base64 image)
    idle_timeout_s: float = 60.0  # a live stream with no message for this long is closed
    max_backlog_s: float = 30.0  # speech a stream may wait on before it is closed (1013)
    job_ttl_s: float = 3600.0  # finished jobs (and their files) are deleted after this
    jpeg_quality: int = 85
    jobs_dir: Path | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            numeric = isinstance(v, int | float) and not isinstance(v, bool)
            if numeric and f.name != "port" and v <= 0:
                raise ReadtalkError(f"serve: {f.name} must be positive, got {v}")
        if not 0 <= self.port < 65536:
            raise ReadtalkError(f"serve: port must lie in [0, 65535], got {self.port}")
        if self.token is not None and not self.token:
            raise ReadtalkError("serve: the token must not be empty")
        if not 1 <= self.jpeg_quality <= 100:
            raise ReadtalkError(
                f"serve: jpeg_quality must lie in [1, 100], got {self.jpeg_quality}"
            )

    def replace(self, **changes) -> ServeConfig:
        return dataclasses.replace(self, **changes)
