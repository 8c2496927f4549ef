"""``POST /v1/webrtc/offer``: a live avatar over WebRTC (aiortc).

The browser sends its microphone (or a file) as an audio track; the server answers with two
tracks: the avatar's video at 25 fps and the same speech, delayed to play in sync with the
frames made from it. Frames leave at a steady 25 fps whatever arrives: the frames of the
speech as soon as they exist, otherwise the last frame again (at the start, the portrait).
While nobody speaks (no audio for ``IDLE_S``), the server feeds silence to the session in
real time, so the avatar keeps living: a closed mouth that still moves, never a freeze.

A client that opens a data channel (any label) hears on it ``{"event": "first_frame"}`` when
the first generated frame leaves for its video track: until then the track shows the portrait,
and a client cannot tell from the pictures alone (the browser page times its first-frame
latency from the first frame that changes after this message).

Each peer holds one live-stream slot (``Engine.slot``) until its connection closes or
fails; then its session is dropped and its memory freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections import deque
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from readtalk.errors import ReadtalkError
from readtalk.media import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, float_to_pcm16
from readtalk.serve.engine import Engine, LiveStream

__all__ = ["WebRTC"]

VIDEO_RATE = 90000  # RTP video clock
AUDIO_PTIME = 0.02  # seconds of audio per outgoing packet
IDLE_S = 0.2  # no speech for this long: silence is fed to keep the avatar alive


class _Clock:
    """Paces a track: ``await tick()`` returns the next pts, sleeping until its time."""

    def __init__(self, period: float, rate: int) -> None:
        self.period, self.rate = period, rate
        self.start: float | None = None
        self.n = 0

    async def tick(self) -> int:
        if self.start is None:
            self.start = time.monotonic()
        else:
            self.n += 1
            await asyncio.sleep(max(0.0, self.start + self.n * self.period - time.monotonic()))
        return round(self.n * self.period * self.rate)


class _Peer:
    """One browser: speech in, avatar frames and delayed speech out (module docstring)."""

    def __init__(self, engine: Engine, live: LiveStream, pc: RTCPeerConnection, slot) -> None:
        self.engine, self.live, self.pc, self._slot = engine, live, pc, slot
        self.frames: deque[np.ndarray] = deque()  # made, not yet shown
        self.speech = np.zeros(0, np.float32)  # speech received, not yet played
        self.out_audio = np.zeros(0, np.float32)  # speech of the frames shown, to play
        self.last = live.portrait
        self._pending: list[np.ndarray] = []
        self._heard = time.monotonic()
        self._tasks: list[asyncio.Task] = [asyncio.create_task(self._feed())]
        self.closed = False
        self.shown = 0
        self.channel = None  # the client's data channel, if it opened one

    def listen(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                for f in resampler.resample(frame):
                    self._pending.append(f.to_ndarray().reshape(-1).astype(np.float32))
                self._heard = time.monotonic()

    async def _feed(self) -> None:
        """Push what arrived to the session, one call at a time (silence while nobody
        speaks); frames and their speech go to the outgoing queues."""
        fed = time.monotonic()
        while not self.closed:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            if not self._pending and now - self._heard > IDLE_S:
                n = int((now - fed) * SAMPLE_RATE)
                self._pending.append(np.zeros(n, np.float32))
            fed = now
            if not self._pending:
                continue
            audio = np.concatenate(self._pending)
            self._pending = []
            self.speech = np.concatenate([self.speech, audio])
            try:
                frames = await self.engine.run(self.live.push, audio)
            except ReadtalkError:  # over the stream's limits
                await self.close()
                return
            self.frames.extend(frames)

    def next_frame(self) -> np.ndarray:
        """The frame to show now, and its speech moved to the outgoing audio."""
        if self.frames:
            self.last = self.frames.popleft()
            self.shown += 1
            if self.shown == 1:
                self.tell_first_frame()
            take = self.speech[:SAMPLES_PER_FRAME]
            self.speech = self.speech[SAMPLES_PER_FRAME:]
            self.out_audio = np.concatenate([self.out_audio, take])
        return self.last

    def tell_first_frame(self) -> None:
        """``{"event": "first_frame"}`` on the client's data channel, once one is open."""
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps({"event": "first_frame"}))

    def next_audio(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        take = self.out_audio[:n]
        out[: len(take)] = take
        self.out_audio = self.out_audio[n:]
        return out

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self.pc.close()
        await self.engine.run(self.live.close)
        self.frames.clear()
        self._slot.close()


class _AvatarTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, peer: _Peer) -> None:
        super().__init__()
        self.peer, self.clock = peer, _Clock(1 / FPS, VIDEO_RATE)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self.clock.tick()
        frame = av.VideoFrame.from_ndarray(self.peer.next_frame(), format="rgb24")
        frame.pts, frame.time_base = pts, fractions.Fraction(1, VIDEO_RATE)
        return frame


class _SpeechTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, peer: _Peer) -> None:
        super().__init__()
        self.peer, self.clock = peer, _Clock(AUDIO_PTIME, SAMPLE_RATE)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self.clock.tick()
        n = round(AUDIO_PTIME * SAMPLE_RATE)
        pcm = float_to_pcm16(self.peer.next_audio(n))[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class WebRTC:
    """The server's WebRTC peers (module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.peers: set[_Peer] = set()

    async def offer(self, body: Any) -> dict[str, str]:
        """``{"sdp", "type": "offer", "image"?, "seed"?, ...settings}`` -> the answer."""
        if not isinstance(body, dict) or body.get("type") != "offer" or not body.get("sdp"):
            raise ReadtalkError('the offer must be {"sdp": ..., "type": "offer", ...}')
        if not isinstance(body["sdp"], str):
            raise ReadtalkError("sdp must be a string")
        fields = {k: v for k, v in body.items() if k not in ("sdp", "type", "image")}
        settings = self.engine.settings(fields)
        image = self.engine.portrait_b64(body.get("image"))
        slot = contextlib.ExitStack()
        slot.enter_context(self.engine.slot())  # Busy propagates: HTTP 503
        try:
            live = await self.engine.run(self.engine.stream, image, settings)
            return await self._answer(body["sdp"], live, slot)
        except BaseException:
            slot.close()
            raise

    async def _answer(self, sdp: str, live: LiveStream, slot) -> dict[str, str]:
        pc = RTCPeerConnection()
        peer = _Peer(self.engine, live, pc, slot)
        self.peers.add(peer)
        pc.addTrack(_AvatarTrack(peer))
        pc.addTrack(_SpeechTrack(peer))

        @pc.on("datachannel")
        def on_channel(channel) -> None:
            peer.channel = channel
            if peer.shown:  # opened after the first generated frame went out
                peer.tell_first_frame()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                peer.listen(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await peer.close()
                self.peers.discard(peer)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, RuntimeError) as e:
            await peer.close()
            self.peers.discard(peer)
            raise ReadtalkError(f"cannot use this SDP offer: {e}") from None
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def close(self) -> None:
        for peer in list(self.peers):
            await peer.close()
        self.peers.clear()
