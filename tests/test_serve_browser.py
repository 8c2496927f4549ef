"""The live page of ``readtalk serve`` (src/readtalk/serve/static) in the real Chromium.

A fake microphone plays espeak-ng speech; the page streams it to a background server over
WebRTC and shows the avatar. The test samples the <video> and checks that frames arrive at
about 25 fps and that the mouth moves with the speech (read from the pixels with the SynthTalk
mouth reader), then runs the WebSocket fallback and checks its canvas gets frames. With
``READTALK_SCREENSHOT`` set, it also saves docs/serve_page.png while the avatar talks.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs {CHROMIUM}"),
]
sync_api = pytest.importorskip("playwright.sync_api")

from readtalk.data.synthtalk import read_mouth  # noqa: E402
from readtalk.live import speech_for  # noqa: E402
from readtalk.media import SAMPLE_RATE, save_wav  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_page.png"

# Samples the avatar <video> every `every` ms, `n` times: PNG data URLs of the frame at
# its own size, and the page's frame count at the first and the last sample.
SAMPLE_JS = """async ({n, every}) => {
  const v = document.getElementById('avatar');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d');
  const pngs = [];
  const t0 = performance.now(), shown0 = readtalkStats.framesShown;
  for (let i = 0; i < n; i++) {
    ctx.drawImage(v, 0, 0, c.width, c.height);
    pngs.push(c.toDataURL('image/png'));
    await new Promise(r => setTimeout(r, every));
  }
  const seconds = (performance.now() - t0) / 1000;
  return {pngs, seconds, shown: readtalkStats.framesShown - shown0};
}"""


def _decode(data_url: str) -> np.ndarray:
    data = base64.b64decode(data_url.partition(",")[2])
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def server():
    from readtalk.serve.config import ServeConfig
    from readtalk.serve.engine import Engine
    from readtalk.serve.server import BackgroundServer

    engine = Engine.load(ServeConfig())
    try:
        with BackgroundServer(engine) as s:
            yield s
    finally:
        engine.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    wav = tmp_path_factory.mktemp("speech") / "speech.wav"
    speech = speech_for(30.0)  # sentences with pauses, then silence
    save_wav(wav, np.concatenate([speech, np.zeros(10 * SAMPLE_RATE, np.float32)]))
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop",
            "--autoplay-policy=no-user-gesture-required"]  # fmt: skip
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield b
        finally:
            b.close()


def _open(browser, server):
    page = browser.new_page(viewport={"width": 800, "height": 640})
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')",
                           timeout=10_000)  # fmt: skip
    return page


def test_webrtc_avatar_talks(server, browser):
    page = _open(browser, server)
    t0 = time.monotonic()
    page.click("#start")
    page.wait_for_function("document.getElementById('avatar').videoWidth > 0 "
                           "&& readtalkStats.framesShown > 5", timeout=30_000)  # fmt: skip
    assert page.evaluate("readtalkStats.mode") == "webrtc"
    assert page.evaluate("document.getElementById('avatar').videoWidth") == 256
    page.wait_for_function("readtalkStats.firstFrameMs !== null", timeout=60_000)
    first_ms = page.evaluate("readtalkStats.firstFrameMs")
    peers = list(server.server.config.app.state.webrtc.peers)
    assert len(peers) == 1 and peers[0].shown > 0  # the page saw a generated frame, truly

    got = page.evaluate(SAMPLE_JS, {"n": 90, "every": 100})
    fps = got["shown"] / got["seconds"]
    opens = np.array([read_mouth(_decode(u)).open for u in got["pngs"]])
    print(f"\nWebRTC: first generated frame {first_ms} ms, {fps:.1f} fps over "
          f"{got['seconds']:.1f} s, mouth open {opens.min():.3f}..{opens.max():.3f} "
          f"({(opens > 0.01).sum()}/{len(opens)} samples open), "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    assert 18 <= fps <= 32, fps
    assert 10 <= page.evaluate("readtalkStats.fps") <= 35
    assert len({round(float(o), 3) for o in opens if o > 0.01}) >= 3, opens
    assert opens.max() - opens.min() > 0.02, opens

    if os.environ.get("READTALK_SCREENSHOT"):
        for _ in range(50):  # a moment with the mouth open
            frame = _decode(page.evaluate(SAMPLE_JS, {"n": 1, "every": 0})["pngs"][0])
            if read_mouth(frame).open > 0.03:
                break
        page.screenshot(path=str(SCREENSHOT))
    page.click("#stop")
    page.close()


def test_websocket_fallback(server, browser):
    page = _open(browser, server)
    page.check("#use-ws")
    page.click("#start")
    page.wait_for_function("readtalkStats.framesShown >= 10", timeout=60_000)
    assert page.evaluate("readtalkStats.mode") == "websocket"
    assert page.evaluate("readtalkStats.firstFrameMs") > 0
    frame = _decode(page.evaluate("document.getElementById('avatar-canvas').toDataURL()"))
    assert frame.shape == (256, 256, 3) and frame.std() > 10  # a face, not a blank canvas
    print(f"\nWebSocket: first frame {page.evaluate('readtalkStats.firstFrameMs')} ms")
    page.click("#stop")
    page.close()
