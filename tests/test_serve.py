"""readtalk serve (readtalk.serve): the WebSocket protocol, video jobs, WebRTC, and every limit
and bad input a client can throw at it, against a real server on loopback (a debug model)."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import threading
import time

import av
import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")

from readtalk import Pipeline, Session  # noqa: E402
from readtalk.media import (  # noqa: E402
    SAMPLES_PER_FRAME,
    decode_image,
    encode_jpeg,
    frames_for_samples,
    probe,
    save_wav,
)
from readtalk.serve import ServeConfig  # noqa: E402
from readtalk.serve.engine import Engine  # noqa: E402
from readtalk.serve.server import BackgroundServer  # noqa: E402
from test_pipeline import SIZE, _face, _speech, _write_models  # noqa: E402

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return Pipeline.from_pretrained(_write_models(tmp_path_factory.mktemp("m") / "m"))


@pytest.fixture(scope="module")
def server(pipe, tmp_path_factory):
    cfg = ServeConfig(
        token=TOKEN, max_sessions=2, max_jobs=2, idle_timeout_s=2.0, max_message_bytes=64_000,
        max_audio_seconds=4.0, max_upload_bytes=1_000_000, max_image_pixels=512 * 512,
        max_backlog_s=3.0,
        jobs_dir=tmp_path_factory.mktemp("jobs"),
    )  # fmt: skip
    with BackgroundServer(Engine(pipe, cfg)) as s:
        yield s


def _ws(server, token=TOKEN, **kw):
    url = server.url.replace("http", "ws", 1) + "/v1/stream"
    if token:
        url += f"?token={token}"
    return websockets.connect(url, max_size=2**24, **kw)


def _pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _png(img: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode(".png", img[..., ::-1])[1].tobytes()).decode()


async def _events(ws, until: str = "done", limit: float = 60.0) -> tuple[list[bytes], list]:
    frames, events = [], []
    async with asyncio.timeout(limit):
        async for m in ws:
            if isinstance(m, bytes):
                frames.append(m)
            else:
                events.append(json.loads(m))
                if events[-1]["type"] == until:
                    break
    return frames, events


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------- basics


def test_health_and_page_need_no_token(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["size"] == SIZE and h["auth"] is True
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_stream_gives_one_jpeg_per_40ms_equal_to_offline(server, pipe):
    speech = _speech(30 * SAMPLES_PER_FRAME + 77, seed=2)
    data = _pcm(speech)
    heard = np.frombuffer(data, "<i2").astype(np.float32) / 32768  # what the server decodes
    want = pipe(_face(), heard, seed=0, progress=False).frames

    async def go():
        async with _ws(server) as ws:
            await ws.send(json.dumps({"type": "start", "image": _png(_face()), "seed": 0}))
            assert json.loads(await ws.recv())["type"] == "ready"
            for i in range(0, len(data), 333):  # odd sizes: a sample split across messages
                await ws.send(data[i : i + 333])
            await ws.send(json.dumps({"type": "end"}))
            frames, events = await _events(ws)
            await ws.wait_closed()
            return frames, events, ws.close_code

    frames, events, code = run(go())
    assert events[-1] == {"type": "done", "frames": frames_for_samples(len(speech))}
    assert len(frames) == frames_for_samples(len(speech)) == 31 and code == 1000
    got = np.stack([decode_image(f) for f in frames])
    assert got.shape == (31, SIZE, SIZE, 3)
    # exactly the offline frames, through the same JPEG encoder
    want = np.stack([decode_image(encode_jpeg(f)) for f in want])
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


# --------------------------------------------------------------------------- auth, limits


def test_stream_token_query_or_bearer_and_4401(server):
    async def go(token, headers=None):
        kw = {"additional_headers": headers} if headers else {}
        async with _ws(server, token=token, **kw) as ws:
            await ws.send(json.dumps({"type": "start"}))
            msg = json.loads(await ws.recv())
            await ws.close()
            return msg, ws.close_code

    assert run(go(TOKEN))[0]["type"] == "ready"
    assert run(go(None, {"Authorization": f"Bearer {TOKEN}"}))[0]["type"] == "ready"

    async def refused(token):
        async with _ws(server, token=token) as ws:
            msg = json.loads(await ws.recv())
            await ws.wait_closed()
            return msg, ws.close_code

    for token in (None, "wrong"):
        msg, code = run(refused(token))
        assert msg["type"] == "error" and code == 4401
    assert httpx.post(server.url + "/v1/videos").status_code == 401
    assert (
        httpx.get(server.url + "/v1/videos/x", headers={"Authorization": "Bearer no"}).status_code
        == 401
    )


def test_bad_messages_are_errors_the_stream_survives(server):
    async def go():
        async with _ws(server) as ws:
            said = []
            for msg in (b"\x00\x01", "{not json", json.dumps({"type": "dance"}),
                        json.dumps({"type": "start", "image": "@@@"}),
                        json.dumps({"type": "start", "wobble": 3}),
                        json.dumps({"type": "start", "steps": 500}),
                        json.dumps({"type": "end"})):  # fmt: skip
                await ws.send(msg)
                said.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "start", "steps": 1}))
            said.append(json.loads(await ws.recv()))
            await ws.close()
            return said

    said = run(go())
    assert [m["type"] for m in said] == ["error"] * 7 + ["ready"]
    text = " | ".join(m["message"] for m in said[:7])
    for part in ("before start", "malformed JSON", "unknown message type", "base64",
                 "unknown generation setting", "steps must be", "end before start"):  # fmt: skip
        assert part in text


def test_a_portrait_the_model_does_not_know_is_a_warning(server, pipe):
    async def go():
        async with _ws(server) as ws:
            await ws.send(json.dumps({"type": "start", "image": _png(_face())}))
            msg = json.loads(await ws.recv())
            await ws.close()
            return msg

    pipe.defaults["portrait"] = {"psnr_min": 200.0}  # nothing fits
    try:
        warned = run(go())
        pipe.defaults["portrait"] = {"psnr_min": -200.0}  # everything fits
        quiet = run(go())
    finally:
        del pipe.defaults["portrait"]
    assert warned["type"] == "ready" and "unlike the faces" in warned["warning"]
    assert quiet["type"] == "ready" and "warning" not in quiet


def test_bad_image_is_one_error(server):
    big = np.zeros((600, 600, 3), np.uint8)  # over max_image_pixels

    async def go(image):
        async with _ws(server) as ws:
            await ws.send(json.dumps({"type": "start", "image": image}))
            msg = json.loads(await ws.recv())
            await ws.close()
            return msg

    assert "too large" in run(go(_png(big)))["message"]
    assert "cannot read" in run(go(base64.b64encode(b"not an image").decode()))["message"]


def test_message_too_big_and_idle_close_the_stream(server):
    async def go(action):
        async with _ws(server) as ws:
            await ws.send(json.dumps({"type": "start", "steps": 1}))
            await ws.recv()
            await action(ws)
            _, events = await _events(ws, until="error", limit=20)
            await ws.wait_closed()
            return events[-1], ws.close_code

    msg, code = run(go(lambda ws: ws.send(b"\x00" * 70_000)))
    assert code == 1009 and "over 64000 bytes" in msg["message"]
    msg, code = run(go(lambda ws: asyncio.sleep(0)))  # says nothing: idle after 2 s
    assert code == 1001 and "idle" in msg["message"]


def test_a_server_that_falls_behind_ends_the_stream(server):
    engine = server.server.config.app.state.engine
    hold = threading.Event()

    async def go():
        async with _ws(server) as ws:
            await ws.send(json.dumps({"type": "start", "steps": 1}))
            await ws.recv()
            engine.executor.submit(hold.wait, 30)  # the compute thread stalls
            for _ in range(8):  # 4 s of speech in 0.5-s messages: still read at once
                await ws.send(_pcm(np.zeros(8000, np.float32)))
            _, events = await _events(ws, until="error", limit=20)
            await ws.wait_closed()
            return events[-1], ws.close_code

    try:
        msg, code = run(go())
    finally:
        hold.set()
    assert code == 1013 and "fell 3 s behind" in msg["message"]


def test_session_limit_gives_1013_and_frees(server):
    async def go():
        async with _ws(server) as a, _ws(server) as b:
            for ws in (a, b):
                await ws.send(json.dumps({"type": "start", "steps": 1}))
                assert json.loads(await ws.recv())["type"] == "ready"
            async with _ws(server) as c:
                msg = json.loads(await c.recv())
                await c.wait_closed()
                third = (msg, c.close_code)
        await asyncio.sleep(0.3)
        async with _ws(server) as d:  # slots are back
            await d.send(json.dumps({"type": "start", "steps": 1}))
            return third, json.loads(await d.recv())

    (msg, code), later = run(go())
    assert code == 1013 and "limit of 2" in msg["message"] and later["type"] == "ready"


def _sessions() -> list:
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is Session]


def test_client_gone_mid_stream_frees_its_session(server):
    speech = _pcm(_speech(40 * SAMPLES_PER_FRAME, seed=4))

    async def go():
        async with _ws(server) as ws:
            await ws.send(json.dumps({"type": "start", "steps": 1}))
            await ws.recv()
            await ws.send(speech)  # a clip's worth and more: frames in flight
        # the connection is gone without "end"
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not _sessions():
                break

    run(go())
    assert _sessions() == []
    assert httpx.get(server.url + "/health").json()["sessions"] == 0


# ------------------------------------------------------------------------------- jobs


def _auth():
    return {"Authorization": f"Bearer {TOKEN}"}


def _wait(server, jid, limit=60.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        st = httpx.get(f"{server.url}/v1/videos/{jid}", headers=_auth()).json()
        assert 0.0 <= st["progress"] <= 1.0
        if st["status"] in ("done", "error"):
            return st
        time.sleep(0.1)
    raise AssertionError("job did not finish")


def test_video_job_round_trip(server, tmp_path):
    wav = tmp_path / "s.wav"
    speech = _speech(25 * SAMPLES_PER_FRAME + 9, seed=5)
    save_wav(wav, speech)
    files = {"audio": ("s.wav", wav.read_bytes()), "image": ("f.jpg", encode_jpeg(_face()))}
    r = httpx.post(server.url + "/v1/videos", files=files, data={"seed": "1", "steps": "1"},
                   headers=_auth())  # fmt: skip
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    assert _wait(server, jid)["status"] == "done"
    v = httpx.get(f"{server.url}/v1/videos/{jid}/video.mp4", headers=_auth())
    assert v.status_code == 200 and v.headers["content-type"] == "video/mp4"
    out = tmp_path / "v.mp4"
    out.write_bytes(v.content)
    info = probe(out)
    assert info.frames == frames_for_samples(len(speech)) and info.audio_duration > 0.9
    assert httpx.get(f"{server.url}/v1/videos/nope", headers=_auth()).status_code == 404
    jobs = server.server.config.app.state.jobs
    assert jobs.expire(now=time.time() + 10**6) == [jid]  # cleaned up after the TTL
    assert httpx.get(f"{server.url}/v1/videos/{jid}", headers=_auth()).status_code == 404
    assert not (jobs.root / jid).exists()


def test_video_job_bad_input(server, tmp_path):
    def post(files, data=None, headers=None):
        return httpx.post(server.url + "/v1/videos", files=files, data=data or {},
                          headers={**_auth(), **(headers or {})})  # fmt: skip

    wav = tmp_path / "long.wav"
    save_wav(wav, _speech(16000 * 5))
    cases = [
        (post({"audio": ("a.wav", b"RIFF garbage")}), 400, "cannot"),
        (post({"audio": ("a.wav", wav.read_bytes())}), 400, "at most 4 s"),
        (post({"image": ("f.jpg", encode_jpeg(_face()))}), 400, "needs an 'audio' file"),
        (post({"audio": ("a.wav", wav.read_bytes())}, {"colour": "red"}), 400, "unknown"),
        (post({"audio": ("a.wav", b"0" * 1_100_000)}), 413, "at most"),
    ]
    for r, status, text in cases:
        assert r.status_code == status and text in r.json()["detail"], r.text


def test_job_queue_is_bounded(server, tmp_path):
    wav = tmp_path / "s.wav"
    save_wav(wav, _speech(16000 * 3))
    engine = server.server.config.app.state.engine
    hold = threading.Event()
    engine.executor.submit(hold.wait, 30)  # the compute thread busy: jobs stay queued
    try:
        ids, codes = [], []
        for _ in range(3):
            r = httpx.post(server.url + "/v1/videos", files={"audio": ("s.wav", wav.read_bytes())},
                           data={"steps": "1"}, headers=_auth())  # fmt: skip
            codes.append(r.status_code)
            ids += [r.json()["id"]] if r.status_code == 202 else []
    finally:
        hold.set()
    assert codes == [202, 202, 503]
    for jid in ids:
        assert _wait(server, jid)["status"] == "done"


# ------------------------------------------------------------------------- the command


def test_serve_command_sigterm_cancels_jobs_cleanly(tmp_path):
    """``readtalk serve`` as users run it (the demo model): SIGTERM during a job ends the
    process promptly, the job's mp4 never appears half-written."""
    import signal
    import subprocess
    import sys

    from readtalk.serve.loadtest import _free_port

    port, jobs = _free_port(), tmp_path / "jobs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "readtalk.cli", "serve", "--port", str(port), "--jobs-dir",
         str(jobs), "--token", TOKEN],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        wav = tmp_path / "s.wav"
        save_wav(wav, _speech(16000 * 20))  # a job of many steps
        r = httpx.post(url + "/v1/videos", files={"audio": ("s.wav", wav.read_bytes())},
                       headers=_auth(), timeout=30)  # fmt: skip
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        for _ in range(600):
            if httpx.get(f"{url}/v1/videos/{jid}", headers=_auth()).json()["status"] == "running":
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # uvicorn exits by the signal it caught, after the graceful shutdown
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "stopped (1 job(s) cancelled)" in out and "Traceback" not in out
    left = [p.name for p in jobs.rglob("*") if p.is_file()]
    assert left == [], left  # no mp4, no temporary file


# ------------------------------------------------------------------------------- WebRTC


def test_webrtc_offer_errors(server):
    def post(body):
        return httpx.post(server.url + "/v1/webrtc/offer", json=body, headers=_auth())

    assert post({"type": "answer", "sdp": "x"}).status_code == 400
    assert post({"type": "offer"}).status_code == 400
    r = post({"type": "offer", "sdp": "v=0 nonsense"})
    assert r.status_code == 400 and "SDP" in r.json()["detail"]
    r = httpx.post(server.url + "/v1/webrtc/offer", content=b"{", headers=_auth())
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    assert httpx.post(server.url + "/v1/webrtc/offer", json={}).status_code == 401
    assert httpx.get(server.url + "/health").json()["sessions"] == 0


async def _rtc_call(server, pc, on_frame) -> list:
    """Offer ``pc`` (tracks and transceivers already added) to the server, answer it, and
    read every incoming track into ``on_frame(kind, frame)``; returns the reader tasks."""
    from aiortc import RTCSessionDescription

    readers = []

    @pc.on("track")
    def on_track(track):
        async def read():
            while True:
                on_frame(track.kind, await track.recv())

        readers.append(asyncio.ensure_future(read()))

    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": "offer", "steps": 1}
    async with httpx.AsyncClient() as client:
        r = await client.post(server.url + "/v1/webrtc/offer", json=offer, headers=_auth())
    assert r.status_code == 200, r.text
    await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
    return readers


def test_webrtc_peer_gets_the_avatar_and_its_speech(server):
    """An aiortc client (a browser stand-in; the page's own test drives Chromium): speech
    in, 25 fps avatar frames and the speech back, the slot freed when it hangs up."""
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack

    speech = _speech(16000 * 3, seed=7)

    class Speech(AudioStreamTrack):
        async def recv(self):
            frame = await super().recv()  # silence at 8 kHz, paced
            n = frame.samples * 2
            i = (frame.pts * 2) % len(speech)
            x = (np.resize(speech[i : i + n], n) * 32767).astype(np.int16)[None]
            out = av.AudioFrame.from_ndarray(x, format="s16", layout="mono")
            out.sample_rate, out.pts, out.time_base = 16000, frame.pts * 2, frame.time_base / 2
            return out

    async def go():
        pc = RTCPeerConnection()
        pc.addTrack(Speech())
        pc.addTransceiver("video", direction="recvonly")
        got = {"video": [], "audio": 0, "events": []}
        channel = pc.createDataChannel("readtalk")
        peers = server.server.config.app.state.webrtc.peers

        @channel.on("message")
        def on_message(msg):  # the server's frames shown when it told us
            got["events"].append((json.loads(msg), [p.shown for p in peers]))

        def on_frame(kind, f):
            if kind == "video":
                got["video"].append((time.monotonic(), f.width, f.height))
            else:
                got["audio"] += 1

        readers = await _rtc_call(server, pc, on_frame)
        async with asyncio.timeout(60):
            while len(got["video"]) < 60:
                await asyncio.sleep(0.05)
        busy = (await asyncio.to_thread(httpx.get, server.url + "/health")).json()["sessions"]
        await pc.close()
        for task in readers:
            task.cancel()
        return got, busy

    got, busy = run(go())
    times = [t for t, _, _ in got["video"][10:]]
    fps = (len(times) - 1) / (times[-1] - times[0])
    assert {(w, h) for _, w, h in got["video"]} == {(SIZE, SIZE)}
    assert 20 <= fps <= 30 and got["audio"] > 0 and busy == 1
    # told once, after the first generated frame went out (the portrait before it)
    assert [e for e, _ in got["events"]] == [{"event": "first_frame"}]
    assert len(got["events"][0][1]) == 1 and got["events"][0][1][0] >= 1
    for _ in range(100):  # the server sees the hang-up and frees the slot
        if httpx.get(server.url + "/health").json()["sessions"] == 0:
            break
        time.sleep(0.1)
    assert httpx.get(server.url + "/health").json()["sessions"] == 0


# -------------------------------------------------------------------------------- load


def test_bench_serve_reports_every_stream(server, pipe):
    from readtalk.serve.loadtest import bench_serve, dit_batching

    rep = bench_serve(2, 1.5, url=server.url, token=TOKEN, settings={"steps": 1}, stagger_s=0.1)
    assert len(rep.results) == 2 and rep.errors == 0
    for r in rep.results:
        assert r.frames == r.expected == frames_for_samples(24000) and r.first_frame_s > 0
    assert rep.rss_start_mb > 0 and any("stream 1:" in line for line in rep.lines())
    rows = dit_batching(pipe, (1, 2), repeats=1)
    assert [r["rows"] for r in rows] == [3, 6] and rows[0]["speedup"] == 1.0


def test_webrtc_avatar_lives_while_nobody_speaks(server):
    """No speech at all (no audio track): the server feeds silence in real time, so generated
    frames keep coming at 25 fps, and they change (a living face, not a frozen one)."""
    from aiortc import RTCPeerConnection

    async def go():
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        frames = []

        def on_frame(kind, f):
            if kind == "video":
                frames.append(f.to_ndarray(format="rgb24"))

        readers = await _rtc_call(server, pc, on_frame)
        webrtc = server.server.config.app.state.webrtc
        async with asyncio.timeout(60):
            while not webrtc.peers or next(iter(webrtc.peers)).shown < 40:
                await asyncio.sleep(0.05)
        await pc.close()
        for task in readers:
            task.cancel()
        return frames

    frames = run(go())
    last = np.stack(frames[-20:]).astype(int)
    assert len(frames) >= 40 and np.abs(np.diff(last, axis=0)).mean() > 0.5
