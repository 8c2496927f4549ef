"""``WS /v1/stream``: a live stream over a WebSocket (protocol: docs/protocol.md).

The client sends ``{"type": "start", "image": <base64>, "seed": 0, ...settings}``, then
binary PCM s16le 16 kHz mono messages of any size, then ``{"type": "end"}``. The server
answers ``{"type": "ready"}``, one binary JPEG message per 40 ms of speech, in order, as soon
as each frame is final, and ``{"type": "done", "frames": N}``; problems are
``{"type": "error", "message": ...}`` events. Bad messages (malformed JSON, an unknown type,
audio before ``start``, a bad image) are errors the stream survives; a message over the size
limit, a stream over its speech limit or an idle client end it (close codes 1009, 1008,
1001). A client that goes away frees its session at once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from readtalk.errors import ReadtalkError
from readtalk.serve.engine import Busy, Engine, LiveStream

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG = 1000, 1001, 1008, 1009
CLOSE_BUSY, CLOSE_UNAUTHORIZED = 1013, 4401


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
    except WebSocketDisconnect:
        pass


class _Stream:
    def __init__(self, ws: WebSocket, engine: Engine) -> None:
        self.ws, self.engine, self.cfg = ws, engine, engine.config
        self.live: LiveStream | None = None

    async def run(self) -> None:
        try:
            while True:
                msg = await self._receive()
                if msg.get("bytes") is not None:
                    await self._audio(msg["bytes"])
                elif msg.get("text") is not None and await self._text(msg["text"]):
                    return
        except _End as e:
            await error(self.ws, str(e))
            await self.ws.close(e.code)
        finally:
            if self.live is not None:  # a client gone mid-stream: free the session now
                await self.engine.run(self.live.close)

    async def _receive(self) -> dict[str, Any]:
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
        await self._send(await self.engine.run(self.live.jpegs_for, x))

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
            await self._send(await self.engine.run(self.live.flush_jpegs))
            await self.ws.send_json({"type": "done", "frames": self.live.frames})
            await self.ws.close(CLOSE_NORMAL)
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
        await self.ws.send_json({"type": "ready", "size": self.engine.pipe.size, "fps": 25})
