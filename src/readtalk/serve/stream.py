"""``WS /v1/stream``: a live stream over a WebSocket (protocol: docs/protocol.md).

The client sends ``{"type": "start", "image": <base64>, "seed": 0, ...settings}``, then
binary PCM s16le 16 kHz mono messages of any size, then ``{"type": "end"}``. The server
answers ``{"type": "ready"}``, one binary JPEG message per 40 ms of speech, in order, as soon
as each frame is final, and ``{"type": "done", "frames": N}``; problems are
``{"type": "error", "message": ...}`` events. Bad messages (malformed JSON, an unknown type,
audio before ``start``, a bad image) are errors the stream survives; a message over the size
limit, a stream over its speech limit, an idle client or a server that falls more than
``max_backlog_s`` behind the speech end it (close codes 1009, 1008, 1001, 1013). A client
that goes away frees its session at once.

The handler always reads (so the client is never blocked and pings are answered), while a
worker task pushes everything that arrived since its last push in one call, so a stream
that waits for the compute thread catches up in one step instead of a queue of small ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLE_RATE
from readtalk.serve.engine import Busy, Engine, LiveStream

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG = 1000, 1001, 1008, 1009
CLOSE_INTERNAL, CLOSE_BUSY, CLOSE_UNAUTHORIZED = 1011, 1013, 4401


class _End(Exception):
    """Close the WebSocket with this code after an error event."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def error(ws: WebSocket, message: str) -> None:
    await ws.send_json({"type": "error", "message": message})


async def serve_stream(ws: WebSocket, engine: Engine) -> None:
    """Run one WebSocket live stream (already authenticated and accepted)."""
    try:
        with engine.slot():
            await _Stream(ws, engine).run()
    except Busy as e:
        await error(ws, str(e))
        await ws.close(CLOSE_BUSY)
    except (WebSocketDisconnect, OSError):  # the client went away (uvicorn: ClientDisconnected)
        pass


class _Stream:
    """One WebSocket stream: this task always reads (so pings are answered and the client is
    never blocked), a worker task feeds what arrived to the session in one push at a time and
    sends the frames back."""

    def __init__(self, ws: WebSocket, engine: Engine) -> None:
        self.ws, self.engine, self.cfg = ws, engine, engine.config
        self.live: LiveStream | None = None
        self._pending: list[np.ndarray] = []  # speech received, not yet pushed
        self._backlog = 0  # its samples
        self._wake = asyncio.Event()
        self._ended = False
        self._worker: asyncio.Task | None = None

    async def run(self) -> None:
        try:
            while True:
                msg = await self._receive()
                if msg.get("bytes") is not None:
                    await self._audio(msg["bytes"])
                elif msg.get("text") is not None and await self._text(msg["text"]):
                    await self._worker  # flushes, sends the rest and "done", closes
                    return
        except _End as e:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # gone already
                await error(self.ws, str(e))
                await self.ws.close(e.code)
        finally:
            if self._worker is not None:
                self._worker.cancel()
            if self.live is not None:  # a client gone mid-stream: free the session now
                await self.engine.run(self.live.close)

    async def _receive(self) -> dict[str, Any]:
        if self._worker is not None and self._worker.done() and self._worker.exception():
            raise self._worker.exception()
        try:
            msg = await asyncio.wait_for(self.ws.receive(), self.cfg.idle_timeout_s)
        except TimeoutError:
            raise _End(CLOSE_GOING_AWAY, f"idle for {self.cfg.idle_timeout_s:g} s") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        return msg

    async def _audio(self, data: bytes) -> None:
        if len(data) > self.cfg.max_message_bytes:
            raise _End(CLOSE_TOO_BIG, f"message over {self.cfg.max_message_bytes} bytes")
        if self.live is None:
            await error(self.ws, 'audio before start: send {"type": "start"} first')
            return
        try:
            x = self.live.pcm(data)
        except ReadtalkError as e:
            raise _End(CLOSE_POLICY, str(e)) from None
        self._pending.append(x)
        self._backlog += len(x)
        if self._backlog > self.cfg.max_backlog_s * SAMPLE_RATE:
            raise _End(CLOSE_BUSY, f"the server fell {self.cfg.max_backlog_s:g} s behind the "
                                   "speech; try again later")  # fmt: skip
        self._wake.set()

    async def _work(self) -> None:
        """``_feed``, with a failure turned into an error event and a close (1011)."""
        try:
            await self._feed()
        except (ReadtalkError, RuntimeError, ValueError) as e:
            raise _End(CLOSE_INTERNAL, f"generation failed: {e}") from None

    async def _feed(self) -> None:
        """Push what arrived (all of it at once), send the frames; at the end, flush."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                audio = np.concatenate(self._pending)
                self._pending, self._backlog = [], 0
                await self._send(await self.engine.run(self.live.jpegs_for, audio))
            if self._ended and not self._pending:
                break
        await self._send(await self.engine.run(self.live.flush_jpegs))
        await self.ws.send_json({"type": "done", "frames": self.live.frames})
        await self.ws.close(CLOSE_NORMAL)

    async def _send(self, jpegs: list[bytes]) -> None:
        for jpeg in jpegs:
            await self.ws.send_bytes(jpeg)

    async def _text(self, text: str) -> bool:
        """Handle a text message; True when the stream is over."""
        if len(text) > self.cfg.max_start_bytes:
            raise _End(CLOSE_TOO_BIG, f"message over {self.cfg.max_start_bytes} bytes")
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            await error(self.ws, "malformed JSON")
            return False
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "start":
            await self._start(msg)
        elif kind == "end":
            if self.live is None:
                await error(self.ws, "end before start")
                return False
            self._ended = True
            self._wake.set()
            return True
        else:
            await error(self.ws, f"unknown message type {kind!r} (start, end)")
        return False

    async def _start(self, msg: dict) -> None:
        if self.live is not None:
            await error(self.ws, "the stream has already started")
            return
        fields = {k: v for k, v in msg.items() if k not in ("type", "image")}
        try:
            settings = self.engine.settings(fields)
            image = self.engine.portrait_b64(msg.get("image"))
            self.live = await self.engine.run(self.engine.stream, image, settings)
        except ReadtalkError as e:
            await error(self.ws, str(e))
            return
        ready = {"type": "ready", "size": self.engine.pipe.size, "fps": 25}
        if self.live.warning:
            ready["warning"] = self.live.warning
        await self.ws.send_json(ready)
        self._worker = asyncio.create_task(self._work())
