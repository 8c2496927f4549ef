// readtalk live page: speech (microphone or a file) in, the talking avatar out, over WebRTC
// (POST /v1/webrtc/offer) or, as a fallback, the WebSocket stream (WS /v1/stream).
'use strict';

const $ = (id) => document.getElementById(id);
const video = $('avatar');
const canvas = $('avatar-canvas');
const stats = (window.readtalkStats = { framesShown: 0, firstFrameMs: null, fps: 0, mode: null });
const RATE = 16000; // the server's PCM rate (WebSocket path)
const CHUNK = 640; // samples per WebSocket message: 40 ms

let session = null; // the running session: { stop() }
let startedAt = 0;
let shownAt = []; // display times of the frames of the last second

$('token').value = new URLSearchParams(location.search).get('token') || '';

function setStatus(text) {
  $('status').textContent = text;
}

function frameShown() {
  stats.framesShown += 1;
  shownAt.push(performance.now());
}

function firstFrame() {
  if (stats.firstFrameMs !== null) return;
  stats.firstFrameMs = Math.round(performance.now() - startedAt);
  $('first-frame').textContent = stats.firstFrameMs;
  setStatus('streaming');
}

setInterval(() => {
  const now = performance.now();
  shownAt = shownAt.filter((t) => t > now - 1000);
  stats.fps = shownAt.length;
  $('fps').textContent = session ? stats.fps : '–';
}, 250);

// ---- inputs

function readPortrait() {
  const file = $('portrait').files[0];
  if (!file) return Promise.resolve(null); // the server's demo face
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); // a data: URL, which the server accepts
    reader.onerror = () => reject(new Error('cannot read the portrait'));
    reader.readAsDataURL(file);
  });
}

// The speech as a MediaStream; begin() starts a file once the server listens.
async function openSpeech(audioCtx) {
  if (document.querySelector('input[name=source]:checked').value === 'mic') {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    return { stream, begin() {}, stop: () => stream.getTracks().forEach((t) => t.stop()) };
  }
  const file = $('audio-file').files[0];
  if (!file) throw new Error('choose an audio file');
  const el = new Audio(URL.createObjectURL(file));
  const dest = audioCtx.createMediaStreamDestination();
  audioCtx.createMediaElementSource(el).connect(dest); // heard back from the avatar, not here
  el.onended = () => setStatus('the audio file has ended');
  return { stream: dest.stream, begin: () => el.play(), stop: () => el.pause() };
}

function tokenOf() {
  return $('token').value.trim();
}

// ---- WebRTC

async function startWebRTC(speech, image) {
  video.hidden = false;
  canvas.hidden = true;
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  // the server says here when its first generated frame goes out (before it, the portrait)
  const events = pc.createDataChannel('readtalk');
  let generating = false;
  events.onmessage = (e) => {
    try {
      if (JSON.parse(e.data).event === 'first_frame') generating = true;
    } catch (err) {
      // not an event of ours
    }
  };
  speech.stream.getAudioTracks().forEach((t) => pc.addTrack(t, speech.stream));
  const remote = new MediaStream();
  pc.ontrack = (e) => {
    remote.addTrack(e.track);
    video.srcObject = remote;
    video.play().catch(() => {});
  };
  pc.onconnectionstatechange = () => {
    if (['failed', 'closed', 'disconnected'].includes(pc.connectionState)) {
      setStatus(`connection ${pc.connectionState}`);
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc); // the server takes no trickled candidates
  const body = { sdp: pc.localDescription.sdp, type: 'offer', seed: 0 };
  if (image) body.image = image;
  const headers = { 'Content-Type': 'application/json' };
  if (tokenOf()) headers.Authorization = `Bearer ${tokenOf()}`;
  let answer;
  try {
    const init = { method: 'POST', headers, body: JSON.stringify(body) };
    const r = await fetch('/v1/webrtc/offer', init);
    answer = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`offer refused (HTTP ${r.status}): ${answer.detail || ''}`);
    await pc.setRemoteDescription(answer);
  } catch (e) {
    pc.close();
    throw e;
  }
  speech.begin();
  setStatus('connected: waiting for the first frames');
  const unwatch = watchVideo(pc, () => generating);
  return {
    stop() {
      unwatch();
      pc.close();
      video.srcObject = null;
    },
  };
}

function iceGathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => pc.iceGatheringState === 'complete' && resolve();
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 3000); // go with the candidates found so far
  });
}

// Counts the frames the <video> shows; the first generated frame is the first that differs
// from the portrait the server shows until then (compared on 32x32 thumbnails with the last
// frame shown before the server said its first generated frame went out: the portrait's first
// frames can still change as the video stream settles).
function watchVideo(pc, generating) {
  let live = true;
  let ref = null;
  const thumb = document.createElement('canvas');
  thumb.width = thumb.height = 32;
  const tctx = thumb.getContext('2d', { willReadFrequently: true });
  const check = () => {
    if (stats.firstFrameMs !== null || !video.videoWidth) return;
    tctx.drawImage(video, 0, 0, 32, 32);
    const px = tctx.getImageData(0, 0, 32, 32).data;
    if (!ref || !generating()) {
      ref = px;
      return;
    }
    let diff = 0;
    for (let i = 0; i < px.length; i++) if (i % 4 !== 3) diff += Math.abs(px[i] - ref[i]);
    if (diff / (px.length * 0.75) > 2) firstFrame(); // mean difference over 2 levels
  };
  if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
    const onFrame = () => {
      if (!live) return;
      frameShown();
      check();
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    // no per-frame callback: count decoded frames from the receiver's stats
    let decoded = 0;
    const poll = setInterval(async () => {
      if (!live) return clearInterval(poll);
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          for (; decoded < s.framesDecoded; decoded++) frameShown();
        }
      });
      check();
    }, 100);
  }
  return () => {
    live = false;
  };
}

// ---- WebSocket fallback: PCM s16le 16 kHz up, one JPEG per frame down

const TAP = `registerProcessor('pcm-tap', class extends AudioWorkletProcessor {
  process(inputs) { if (inputs[0][0]) this.port.postMessage(inputs[0][0].slice(0)); return true; }
});`;

// Box-filter decimation from the context's rate to 16 kHz; returns PCM s16le samples.
function downsampler(rate) {
  const step = rate / RATE;
  let buf = new Float32Array(0);
  let pos = 0;
  return (x) => {
    const all = new Float32Array(buf.length + x.length);
    all.set(buf);
    all.set(x, buf.length);
    const out = [];
    for (; pos + step <= all.length; pos += step) {
      const a = Math.floor(pos);
      const b = Math.max(a + 1, Math.floor(pos + step));
      let s = 0;
      for (let k = a; k < b; k++) s += all[k];
      out.push(Math.max(-32768, Math.min(32767, Math.round((s / (b - a)) * 32767))));
    }
    const keep = Math.floor(pos);
    buf = all.slice(keep);
    pos -= keep;
    return out;
  };
}

async function startWebSocket(speech, image, audioCtx) {
  const url = new URL('/v1/stream', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (tokenOf()) url.searchParams.set('token', tokenOf());
  const ws = new WebSocket(url);
  ws.binaryType = 'blob';
  video.hidden = true;
  canvas.hidden = false;
  const ctx = canvas.getContext('2d');
  const queue = []; // decoded frames waiting for their 40 ms slot
  let decoding = Promise.resolve();
  let tap = null;

  const draw = setInterval(() => {
    const frame = queue.shift();
    if (!frame) return;
    ctx.drawImage(frame, 0, 0, canvas.width, canvas.height);
    frame.close();
    frameShown();
  }, 40);

  const capture = async () => {
    const blob = new Blob([TAP], { type: 'text/javascript' });
    await audioCtx.audioWorklet.addModule(URL.createObjectURL(blob));
    tap = new AudioWorkletNode(audioCtx, 'pcm-tap');
    audioCtx.createMediaStreamSource(speech.stream).connect(tap).connect(audioCtx.destination);
    const down = downsampler(audioCtx.sampleRate);
    let pending = [];
    tap.port.onmessage = (e) => {
      pending = pending.concat(down(e.data));
      if (pending.length >= CHUNK && ws.readyState === WebSocket.OPEN) {
        ws.send(Int16Array.from(pending).buffer);
        pending = [];
      }
    };
  };

  const hello = image ? { type: 'start', seed: 0, image } : { type: 'start', seed: 0 };
  ws.onopen = () => ws.send(JSON.stringify(hello));
  ws.onmessage = async (e) => {
    if (typeof e.data !== 'string') {
      firstFrame();
      const blob = e.data;
      decoding = decoding.then(() => createImageBitmap(blob)).then((b) => queue.push(b));
      return;
    }
    const msg = JSON.parse(e.data);
    if (msg.type === 'ready') {
      await capture();
      speech.begin();
      setStatus('connected: waiting for the first frames');
    } else if (msg.type === 'error') {
      setStatus(`error: ${msg.message}`);
    } else if (msg.type === 'done') {
      setStatus(`done: ${msg.frames} frames`);
    }
  };
  ws.onclose = (e) => {
    if (e.code !== 1000) setStatus(`closed (${e.code}) ${e.reason}`);
  };
  ws.onerror = () => setStatus('WebSocket error');
  return {
    stop() {
      if (tap) tap.disconnect();
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'end' }));
      setTimeout(() => clearInterval(draw), 3000); // let the last frames play
    },
  };
}

// ---- start / stop

async function start() {
  $('start').disabled = true;
  $('stop').disabled = false;
  Object.assign(stats, { framesShown: 0, firstFrameMs: null, fps: 0 });
  shownAt = [];
  $('first-frame').textContent = '–';
  startedAt = performance.now();
  const audioCtx = new AudioContext();
  let speech = null;
  try {
    speech = await openSpeech(audioCtx);
    const image = await readPortrait();
    let run = null;
    if (!$('use-ws').checked && window.RTCPeerConnection) {
      stats.mode = 'webrtc';
      setStatus('connecting (WebRTC)');
      run = await startWebRTC(speech, image).catch((e) => {
        console.warn('WebRTC failed, falling back to the WebSocket:', e);
        return null;
      });
    }
    if (!run) {
      stats.mode = 'websocket';
      setStatus('connecting (WebSocket)');
      run = await startWebSocket(speech, image, audioCtx);
    }
    $('mode').textContent = stats.mode === 'webrtc' ? 'WebRTC' : 'WebSocket';
    session = {
      stop() {
        run.stop();
        speech.stop();
        setTimeout(() => audioCtx.close(), 3000);
      },
    };
  } catch (e) {
    setStatus(`error: ${e.message}`);
    if (speech) speech.stop();
    audioCtx.close();
    $('start').disabled = false;
    $('stop').disabled = true;
  }
}

function stop() {
  if (session) session.stop();
  session = null;
  $('start').disabled = false;
  $('stop').disabled = true;
  setStatus('stopped');
}

$('start').onclick = start;
$('stop').onclick = stop;
$('portrait').onchange = () => {
  const file = $('portrait').files[0];
  $('portrait-name').textContent = file ? file.name : 'Default: the demo face';
};
document.querySelectorAll('input[name=source]').forEach((r) => {
  r.onchange = () => ($('audio-file').disabled = r.value !== 'file' || !r.checked);
});
$('use-ws').onchange = () => {
  video.hidden = $('use-ws').checked;
  canvas.hidden = !$('use-ws').checked;
};

fetch('/health')
  .then((r) => r.json())
  .then((h) => setStatus(`ready (${h.size} px${h.auth ? ', token needed' : ''})`))
  .catch(() => setStatus('server unreachable'));
