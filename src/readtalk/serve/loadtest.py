"""``readtalk bench serve``: N concurrent live streams against a server, paced like
microphones, and what each of them saw.

Each stream opens ``WS /v1/stream``, sends ``start``, then its speech as PCM s16le in
``chunk_ms`` pieces on the wall clock, then ``end``, and times every JPEG that comes back
(``readtalk.live.frame_timing``: first-frame latency, lateness against a player that starts
at the first frame, underruns). Streams start ``stagger_s`` apart, as users arrive. Without
``url``, a server is started in a subprocess (``readtalk serve`` on a free port) so that its
memory can be read apart from the client's.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
import torch
import websockets

from readtalk.errors import ReadtalkError
from readtalk.live import chunk_samples, frame_timing, rss_mb, speech_for
from readtalk.media import FPS, SAMPLE_RATE, float_to_pcm16, frames_for_samples
from readtalk.pipeline import Pipeline

__all__ = ["ServeReport", "bench_serve", "dit_batching"]


@dataclass
class StreamResult:
    frames: int
    expected: int
    fps: float
    first_frame_s: float
    lateness_p95_s: float
    underruns: int
    error: str | None = None


@dataclass
class ServeReport:
    streams: int
    seconds: float
    chunk_ms: float
    results: list[StreamResult]
    first_frame_p50_s: float
    first_frame_p95_s: float
    fps_min: float
    underruns: int
    errors: int
    rss_start_mb: float
    rss_end_mb: float
    settings: dict = field(default_factory=dict)
    batching: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"serve: {self.streams} concurrent paced streams of {self.seconds:g} s "
            f"({self.chunk_ms:g}-ms pieces) {self.settings or ''}",
            f"  first frame p50 {self.first_frame_p50_s:.3f} s, p95 {self.first_frame_p95_s:.3f}"
            f" s; slowest stream {self.fps_min:.2f} fps; underruns {self.underruns}; "
            f"errors {self.errors}",
            f"  server RSS {self.rss_start_mb:.0f} MB -> {self.rss_end_mb:.0f} MB",
        ]
        for b in self.batching:
            out.append(
                f"  DiT batching: {b['sessions']} session(s) in one call ({b['rows']} rows) "
                f"{b['call_s'] * 1e3:.0f} ms, {b['per_session_s'] * 1e3:.0f} ms a session "
                f"({b['speedup']:.2f}x)"
            )
        for i, r in enumerate(self.results):
            out.append(
                f"  stream {i}: {r.frames}/{r.expected} frames, {r.fps:.2f} fps, first "
                f"{r.first_frame_s:.3f} s, late p95 {r.lateness_p95_s:+.3f} s, "
                f"underruns {r.underruns}" + (f", error: {r.error}" if r.error else "")
            )
        return out


async def _one_stream(url: str, token: str | None, audio: np.ndarray, chunk: int,
                      settings: dict) -> StreamResult:  # fmt: skip
    pcm = float_to_pcm16(audio).tobytes()
    expected = frames_for_samples(len(audio))
    ready: list[float] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    error = None
    async with websockets.connect(url, additional_headers=headers, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "start", **settings}))
        msg = json.loads(await ws.recv())
        if msg.get("type") != "ready":
            return StreamResult(0, expected, 0.0, float("nan"), float("nan"), 0, str(msg))

        async def receive() -> None:
            nonlocal error
            async for m in ws:
                if isinstance(m, bytes):
                    ready.append(time.perf_counter() - t0)
                elif json.loads(m).get("type") == "error":
                    error = json.loads(m)["message"]

        t0 = time.perf_counter()
        reader = asyncio.create_task(receive())
        try:
            for i, start in enumerate(range(0, len(pcm), 2 * chunk)):
                await asyncio.sleep(max(0.0, t0 + i * chunk / SAMPLE_RATE - time.perf_counter()))
                await ws.send(pcm[start : start + 2 * chunk])
            await ws.send(json.dumps({"type": "end"}))
        except websockets.ConnectionClosed as e:
            error = error or f"closed while sending: {e}"
        try:
            await reader
        except websockets.ConnectionClosed as e:
            error = error or f"closed: {e}"
    if not ready:
        return StreamResult(0, expected, 0.0, float("nan"), float("nan"), 0, error or "no frames")
    t = frame_timing(ready)
    span = ready[-1] - ready[0]
    fps = (len(ready) - 1) / span if span > 0 else float(FPS)
    return StreamResult(len(ready), expected, fps, t["first_frame_s"], t["lateness_p95_s"],
                        t["underruns"], error)  # fmt: skip


def dit_batching(pipe, sessions: tuple[int, ...] = (1, 2, 4), repeats: int = 5) -> list[dict]:
    """What batching several sessions into one DiT pass buys: one guided DiT call of a clip
    (the guidance batch of one session: 3 rows with Split-CFG) against ``n`` sessions' rows
    in one call. Returns per ``n``: seconds per call, per session, and the speed-up."""
    st = pipe.default_settings
    rows = {"split": 3, "joint": 2}.get(st.guidance, 1)
    cfg, f = pipe.dit.cfg, st.clip_latents(pipe.vae.temporal_factor)
    h = pipe.size // pipe.vae.spatial_factor
    dev, dt = pipe.device, pipe.dtype
    out = []
    for n in sessions:
        b = rows * n
        c = cfg.latent_channels
        args = (
            torch.randn(b, c, f, h, h, device=dev, dtype=dt),  # noisy latents
            torch.rand(b, 1 + f, device=dev),  # per-frame timesteps
            torch.randn(b, c, 1, h, h, device=dev, dtype=dt),  # reference
            torch.randn(b, f, cfg.audio_dim, device=dev, dtype=dt),  # speech codes
        )
        with torch.no_grad():
            pipe.dit(*args)  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                pipe.dit(*args)
        sec = (time.perf_counter() - t0) / repeats
        out.append({"sessions": n, "rows": b, "call_s": sec, "per_session_s": sec / n})
    base = out[0]["per_session_s"]
    for r in out:
        r["speedup"] = base / r["per_session_s"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Subprocess:
    """``readtalk serve`` on a free loopback port, until closed."""

    def __init__(self, model: str | None, max_sessions: int) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "readtalk.cli", "serve", "--port", str(self.port)]
        cmd += ["--max-sessions", str(max_sessions)] + (["--model", model] if model else [])
        env = {**os.environ, "READTALK_TOKEN": ""}
        # a file, not a pipe: a full pipe would stall the server
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=self.log, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise ReadtalkError(f"the server exited: {self.log.read().strip()[-500:]}")
            try:
                httpx.get(self.url + "/health", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.close()
        raise ReadtalkError("the server did not start within 120 s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


async def _run_streams(url, token, streams, seconds, chunk, stagger_s, settings, seed):
    ws_url = url.replace("http", "ws", 1) + "/v1/stream"

    async def delayed(i: int) -> StreamResult:
        await asyncio.sleep(i * stagger_s)
        audio = await asyncio.to_thread(speech_for, seconds, seed + i)
        try:
            return await _one_stream(ws_url, token, audio, chunk, settings)
        except (OSError, websockets.WebSocketException) as e:
            n = frames_for_samples(len(audio))
            return StreamResult(
                0, n, 0.0, float("nan"), float("nan"), 0, f"{type(e).__name__}: {e}"
            )

    return await asyncio.gather(*(delayed(i) for i in range(streams)))


def bench_serve(
    streams: int = 1,
    seconds: float = 30.0,
    *,
    url: str | None = None,
    token: str | None = None,
    model: str | None = None,
    chunk_ms: float = 20.0,
    stagger_s: float = 0.5,
    settings: dict | None = None,
    seed: int = 0,
    batching: bool = False,
) -> ServeReport:
    """Run ``streams`` paced streams of ``seconds`` of speech against ``url`` (None: a server
    of its own, ``model``), and report (module docstring). ``batching``: first measure
    ``dit_batching`` for 1 .. ``streams`` sessions on the model in this process."""
    if streams < 1 or seconds <= 0:
        raise ReadtalkError("bench serve needs --streams >= 1 and --seconds > 0")
    batch = []
    if batching:
        pipe = Pipeline.from_pretrained(model)
        batch = dit_batching(pipe, tuple(sorted({1, *range(2, streams + 1, 2), streams})))
        del pipe
    server = None if url else _Subprocess(model, max_sessions=streams)
    url = url or server.url
    pid = server.proc.pid if server else None
    try:
        rss0 = rss_mb(pid) if pid else float(httpx.get(url + "/health").json().get("rss_mb", 0))
        chunk = chunk_samples(chunk_ms)
        results = asyncio.run(_run_streams(url, token, streams, seconds, chunk, stagger_s,
                                           settings or {}, seed))  # fmt: skip
        rss1 = rss_mb(pid) if pid else float(httpx.get(url + "/health").json().get("rss_mb", 0))
    finally:
        if server:
            server.close()
    ok = [r for r in results if r.error is None and r.frames]
    firsts = np.array([r.first_frame_s for r in ok]) if ok else np.array([np.nan])
    return ServeReport(
        streams=streams, seconds=seconds, chunk_ms=chunk_ms, results=list(results),
        first_frame_p50_s=float(np.percentile(firsts, 50)),
        first_frame_p95_s=float(np.percentile(firsts, 95)),
        fps_min=min((r.fps for r in results), default=0.0),
        underruns=sum(r.underruns for r in results),
        errors=sum(r.error is not None or r.frames != r.expected for r in results),
        rss_start_mb=rss0, rss_end_mb=rss1, settings=settings or {}, batching=batch,
    )  # fmt: skip
