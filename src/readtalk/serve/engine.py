"""The server's one model and the work it does: ``Engine`` loads the pipeline once, runs all
model work on one compute thread (the CPU's cores serve one DiT pass at a time better than
several passes that fight over them), counts live-stream slots, and turns client input
(base64 or uploaded images, JSON settings, PCM bytes) into what the pipeline takes, with a
one-line ``ReadtalkError`` for anything it cannot use.

``LiveStream`` is one live session seen from a transport: PCM s16le or float speech in,
frames (uint8 arrays, or JPEG bytes) out, in order, one per 40 ms of speech received.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from readtalk.demo import demo_portrait
from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLE_RATE, PcmJoiner, decode_image, encode_jpeg
from readtalk.pipeline import Pipeline
from readtalk.serve.config import ServeConfig
from readtalk.session import Session
from readtalk.settings import GenerationSettings

__all__ = ["Busy", "Engine", "LiveStream"]

T = TypeVar("T")
MAX_STEPS = 50  # a client cannot ask for more Euler steps than this


class Busy(Exception):
    """Every live-stream slot is taken (HTTP 503, WebSocket close 1013)."""


class Engine:
    """The pipeline, its compute thread and the live-stream slots (module docstring)."""

    def __init__(self, pipe: Pipeline, config: ServeConfig) -> None:
        self.pipe = pipe
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readtalk-compute")
        self.sessions = 0
        self._slots = threading.Lock()
        self.default_portrait = demo_portrait(pipe.size)

    @classmethod
    def load(cls, config: ServeConfig) -> Engine:
        pipe = Pipeline.from_pretrained(config.model, device=config.device, dtype=config.dtype)
        return cls(pipe, config)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the compute thread (calls run one at a time, in order)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    # ---- live-stream slots

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of ``max_sessions`` live-stream slots; ``Busy`` when none is free."""
        with self._slots:
            if self.sessions >= self.config.max_sessions:
                raise Busy(f"the server is at its limit of {self.config.max_sessions} live streams")
            self.sessions += 1
        try:
            yield
        finally:
            with self._slots:
                self.sessions -= 1

    # ---- client input

    def portrait(self, data: bytes | None) -> np.ndarray:
        """Encoded image bytes -> the framed portrait, uint8 (size, size, 3); None: the
        model's own portrait (a SynthTalk face, which the demo model knows)."""
        if data is None:
            return self.default_portrait
        img = decode_image(data, "the image", max_pixels=self.config.max_image_pixels)
        return self.pipe.prepare_image(img)

    def portrait_b64(self, text: Any) -> np.ndarray:
        """A base64 image (optionally a ``data:`` URL) from a JSON message -> the portrait."""
        if text is None:
            return self.portrait(None)
        if not isinstance(text, str):
            raise ReadtalkError("image must be a base64 string")
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ReadtalkError("image is not valid base64") from None
        return self.portrait(data)

    def settings(self, fields: Mapping[str, Any]) -> GenerationSettings:
        """Generation settings from a client (JSON values; unknown names are errors)."""
        st = self.pipe.settings(**dict(fields))
        if st.steps > MAX_STEPS:
            raise ReadtalkError(f"steps must be <= {MAX_STEPS}, got {st.steps}")
        return st

    def portrait_warning(self, image: np.ndarray) -> str | None:
        """The one-line warning for a framed portrait unlike the model's training faces (the
        pipeline's ``PortraitWarning``), sent to the client; None when it fits."""
        fit = self.pipe.portrait_fit(image)
        return None if fit.ok else fit.message()

    def stream(self, image: np.ndarray, settings: GenerationSettings) -> LiveStream:
        """A live stream for a framed portrait (call on the compute thread: it encodes the
        portrait); its ``warning`` says when the model will not draw this face well."""
        live = LiveStream(
            self.pipe.stream(image, settings, check_portrait=False), self.config, image
        )
        live.warning = self.portrait_warning(image)
        return live


class LiveStream:
    """One live session behind a transport (module docstring). Its methods run on the
    compute thread (``Engine.run``); ``pcm`` is cheap and may run anywhere."""

    def __init__(self, session: Session, config: ServeConfig, portrait: np.ndarray) -> None:
        self.session = session
        self.portrait = portrait  # the framed portrait, uint8 (size, size, 3)
        self.warning: str | None = None
        self.config = config
        self._pcm = PcmJoiner()
        self.frames = 0

    @property
    def seconds(self) -> float:
        return self.session.samples_in / SAMPLE_RATE

    def pcm(self, data: bytes) -> np.ndarray:
        """PCM s16le bytes of any length -> float32 samples (a trailing odd byte waits for the
        next message); a ``ReadtalkError`` past ``max_stream_seconds``."""
        x = self._pcm.feed(data)
        if self.seconds + len(x) / SAMPLE_RATE > self.config.max_stream_seconds:
            raise ReadtalkError(
                f"the stream passed its limit of {self.config.max_stream_seconds:g} s of speech"
            )
        return x

    def push(self, audio: np.ndarray) -> list[np.ndarray]:
        frames = self.session.push(audio)
        self.frames += len(frames)
        return frames

    def flush(self) -> list[np.ndarray]:
        frames = self.session.flush() if not self.session.closed else []
        self.frames += len(frames)
        return frames

    def jpegs(self, frames: list[np.ndarray]) -> list[bytes]:
        return [encode_jpeg(f, self.config.jpeg_quality) for f in frames]

    def jpegs_for(self, audio: np.ndarray) -> list[bytes]:
        """Speech -> the JPEG frames that became final."""
        return self.jpegs(self.push(audio))

    def flush_jpegs(self) -> list[bytes]:
        return self.jpegs(self.flush())

    def close(self) -> None:
        self.session.close()
