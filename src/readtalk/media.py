"""Media: mp4 video with audio, audio files of any format, images, and the frame <-> tensor
conversions every model-facing layer shares.

Everything goes through PyAV (its bundled FFmpeg has libx264 and AAC) so no system FFmpeg is
needed. Video frames are uint8 RGB arrays (F, H, W, 3); audio is float32 mono in [-1, 1] at
``SAMPLE_RATE``; video runs at ``FPS``, so one frame is ``SAMPLES_PER_FRAME`` samples (the A/V
constants are defined here once). Model tensors are float RGB in [-1, 1], (3, F, H, W).
Writes are atomic: a file appears under its final name only once it is complete.

**Frame rule.** Audio of ``N`` samples gives ``F = ceil(N / 640)`` frames (one per started
40 ms; ``frames_for_samples``), so a video covers all of its speech and is at most 40 ms longer.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf
import soxr
import torch

from readtalk.errors import ReadtalkError

SAMPLE_RATE = 16000  # Hz: every audio signal the models see
FPS = 25  # video frames per second
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640: the audio of one video frame


def frames_for_samples(samples: int) -> int:
    """Video frames for ``samples`` of 16 kHz audio: ``ceil(samples / 640)`` (>= 1 required)."""
    if samples < SAMPLES_PER_FRAME:
        raise ReadtalkError(
            f"audio too short: {samples} samples ({samples / SAMPLE_RATE * 1000:.0f} ms); "
            f"at least one video frame (40 ms = {SAMPLES_PER_FRAME} samples) is needed"
        )
    return -(-int(samples) // SAMPLES_PER_FRAME)


def as_audio(audio: np.ndarray | torch.Tensor, what: str = "audio") -> np.ndarray:
    """16 kHz mono float samples (array or tensor) -> float32 (N,); one-line errors for the
    wrong shape or dtype and for NaN / infinite samples."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().float().cpu().numpy()
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ReadtalkError(f"{what} must be mono 16 kHz samples (N,), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ReadtalkError(f"{what} must be float samples in [-1, 1], got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ReadtalkError(f"{what} contains NaN or infinite samples")
    return x


# ---------------------------------------------------------------------------- PCM s16le


def pcm16_to_float(data: bytes) -> np.ndarray:
    """PCM s16le bytes (a whole number of samples) -> float32 samples in [-1, 1)."""
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples -> int16 (clipped to [-1, 1]); ``.tobytes()`` gives PCM s16le."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


class PcmJoiner:
    """PCM s16le arriving in pieces of any byte length -> float32 samples: a byte that ends
    a piece mid-sample waits for the next one."""

    def __init__(self) -> None:
        self._odd = b""

    def feed(self, data: bytes) -> np.ndarray:
        data = self._odd + data
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        return pcm16_to_float(data[:cut])


# ------------------------------------------------------------------------- frames <-> tensors


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(..., 3, F, H, W) in [-1, 1] -> uint8 (..., F, H, W, 3): the inverse of ``to_tensor``."""
    x = video.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.movedim(-4, -1).cpu().numpy()


def to_unit(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> (B*F, 3, H, W) in [0, 1] for the pixel metrics."""
    return video.clamp(-1, 1).add(1).div(2).permute(0, 2, 1, 3, 4).flatten(0, 1)


def fit_size(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop uint8 (F, H, W, 3) frames to a square and resize to ``size`` (no-op when
    they already are, or for ``size`` 0)."""
    _, h, w, _ = frames.shape
    if size == 0 or (h == w == size):
        return frames
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = frames[:, y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in crop])


# ------------------------------------------------------------------------------------ files


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


def _require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ReadtalkError(f"{what} not found: {p}")
    if not p.is_file():
        raise ReadtalkError(f"{what} is not a file: {p}")
    if p.stat().st_size == 0:
        raise ReadtalkError(f"{what} is empty: {p}")
    return p


def _open(path: Path, what: str) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ReadtalkError(
            f"cannot read {what} {path}: not a media file PyAV can decode ({e})"
        ) from None


# ------------------------------------------------------------------------------------------ audio


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file PyAV reads to float32 mono at ``sample_rate``.

    Works for wav, flac, mp3, m4a, ogg and the audio track of a video. Channels are averaged.
    Raises ReadtalkError for a missing, empty or corrupt file, or one without audio. Silence is
    valid; a stream that decodes to no samples at all is not.
    """
    p = _require_file(path, "audio file")
    with _open(p, "audio file") as c:
        if not c.streams.audio:
            raise ReadtalkError(f"{p} has no audio stream")
        stream = c.streams.audio[0]
        src_rate = stream.sample_rate or stream.codec_context.sample_rate
        chunks = []
        try:
            for frame in c.decode(stream):
                raw = frame.to_ndarray()
                # planar: (channels, n); packed: (1, n*channels)
                x = raw if frame.format.is_planar else raw.reshape(-1, len(frame.layout.channels)).T
                x = x.astype(np.float32)
                if np.issubdtype(raw.dtype, np.integer):
                    x /= float(np.iinfo(raw.dtype).max) + 1.0
                chunks.append(x.mean(axis=0))
        except av.error.FFmpegError as e:
            raise ReadtalkError(f"cannot decode audio in {p}: file is corrupt ({e})") from None
        # AAC decoders emit encoder padding beyond the stream's declared duration: trim it.
        duration = float(stream.duration * stream.time_base) if stream.duration else None
    if not chunks:
        raise ReadtalkError(f"{p} contains no audio samples")
    audio = np.concatenate(chunks)
    if duration is not None:
        audio = audio[: int(round(duration * src_rate))]
    if audio.size == 0:
        raise ReadtalkError(f"{p} contains no audio samples")
    if src_rate != sample_rate:
        audio = soxr.resample(audio, src_rate, sample_rate, quality="HQ").astype(np.float32)
    return np.clip(audio, -1.0, 1.0)


def save_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float audio in [-1, 1] as 16-bit PCM wav, atomically."""

    p = Path(path)
    tmp = _tmp_name(p)
    sf.write(str(tmp), np.clip(audio, -1, 1), sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, p)


# ------------------------------------------------------------------------------------------ video


class _Mp4Encoder:
    """What both mp4 writers share: an H.264 stream (yuv420p), AAC tracks, frame checks."""

    def _open(self, target: Path, width: int, height: int, fps: int, video_options: dict,
              container_options: dict | None = None) -> None:  # fmt: skip
        if width % 2 or height % 2:
            raise ReadtalkError(f"H.264 needs even frame sizes, got {width}x{height}")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._c = av.open(str(target), "w", format="mp4", options=container_options or {})
        self._v = self._c.add_stream("libx264", rate=fps)
        self._v.width, self._v.height, self._v.pix_fmt = width, height, "yuv420p"
        self._v.options = video_options
        self._a = None
        self._n = 0
        self._shape = (height, width, 3)

    def _add_aac(self, sample_rate: int) -> None:
        self._a = self._c.add_stream("aac", rate=sample_rate)
        self._a.layout = "mono"
        self._a.bit_rate = 64000

    def _encode_audio(self, audio: np.ndarray, pts: int, sample_rate: int) -> int:
        """Encode mono float samples starting at sample ``pts``; returns how many."""
        x = np.ascontiguousarray(np.clip(audio, -1, 1), dtype=np.float32)[None]
        frame = av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = pts
        frame.time_base = Fraction(1, sample_rate)
        self._mux(self._a.encode(frame))
        return x.shape[1]

    def _mux(self, packets) -> None:
        for pkt in packets:
            self._c.mux(pkt)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != self._shape or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {self._shape}, got {frame.dtype} {frame.shape}")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self._n
        self._n += 1
        self._mux(self._v.encode(vf))

    @property
    def frames_written(self) -> int:
        return self._n


class VideoWriter(_Mp4Encoder):
    """Streaming H.264 mp4 writer (yuv420p) with an optional AAC audio track.

    Frames are encoded as they arrive, so memory does not grow with length. The file is written
    under a temporary name and moved into place by ``close()``; if the writer is closed after an
    exception (``with`` block), the partial file is removed instead.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: int = FPS,
        crf: int = 18,
        preset: str = "veryfast",
        threads: int = 0,
    ) -> None:
        self.path = Path(path)
        self._tmp = _tmp_name(self.path)
        self._open(self._tmp, width, height, fps, {"crf": str(crf), "preset": preset})
        self._v.codec_context.thread_count = threads

    def add_audio(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Mux a whole mono float track (call once, before or after the frames)."""
        if self._a is not None:
            raise RuntimeError("audio already added")
        if audio.ndim != 1 or audio.size == 0:
            raise ReadtalkError("audio must be a non-empty mono track")
        self._add_aac(sample_rate)
        self._encode_audio(audio, 0, sample_rate)
        self._mux(self._a.encode())

    def close(self) -> Path:
        self._mux(self._v.encode())
        self._c.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # it may be broken already; removal is what matters
            self._c.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class LiveVideoWriter(_Mp4Encoder):
    """A growing mp4 for live output: fragmented (``frag_keyframe+empty_moov``), written in
    place, so a player can open it while frames are still arriving; H.264 tuned for zero
    latency with a keyframe every second, and an AAC track fed piece by piece
    (``write_audio``) as the speech arrives. ``close()`` finishes the last fragment."""

    def __init__(
        self, path: str | os.PathLike, width: int, height: int, fps: int = FPS, crf: int = 20
    ) -> None:
        self.path = Path(path)
        video = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency", "g": str(fps)}
        container = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
        self._open(self.path, width, height, fps, video, container)
        self._add_aac(SAMPLE_RATE)
        self._samples = 0

    def write_audio(self, audio: np.ndarray) -> None:
        """Append mono float samples at ``SAMPLE_RATE``."""
        if len(audio):
            self._samples += self._encode_audio(audio, self._samples, SAMPLE_RATE)

    def close(self) -> Path:
        self._mux(self._v.encode())
        self._mux(self._a.encode())
        self._c.close()
        return self.path

    def __enter__(self) -> LiveVideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()  # a live file keeps what it has, even after an error or Ctrl-C


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    audio: np.ndarray | None = None,
    fps: int = FPS,
    sample_rate: int = SAMPLE_RATE,
    **kwargs,
) -> Path:
    """Write frames (uint8 RGB, (F, H, W, 3) or an iterable of (H, W, 3)) and audio to an mp4."""
    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise ReadtalkError("no frames to write") from None
    h, w = first.shape[:2]
    with VideoWriter(path, w, h, fps=fps, **kwargs) as vw:
        if audio is not None:
            vw.add_audio(audio, sample_rate)
        vw.write(first)
        for f in it:
            vw.write(f)
    return Path(path)


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    duration: float
    audio_duration: float | None
    audio_sample_rate: int | None


def probe(path: str | os.PathLike) -> VideoInfo:
    """Stream facts of a video file (frame count is counted by decoding when not stored)."""
    p = _require_file(path, "video file")
    with _open(p, "video file") as c:
        if not c.streams.video:
            raise ReadtalkError(f"{p} has no video stream")
        v = c.streams.video[0]
        fps = float(v.average_rate or v.guessed_rate or 0)
        if not v.frames and v.guessed_rate:  # fragmented mp4 (LiveVideoWriter): no frame
            fps = float(v.guessed_rate)  # count stored, and the average counts the audio's end
        duration = float(v.duration * v.time_base) if v.duration else float(c.duration or 0) / 1e6
        frames = v.frames or sum(1 for _ in c.decode(v))
        a = c.streams.audio[0] if c.streams.audio else None
        adur = float(a.duration * a.time_base) if a is not None and a.duration else None
        return VideoInfo(
            frames, fps, v.width, v.height, duration, adur, a.sample_rate if a is not None else None
        )


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode the frames of a video one at a time as uint8 RGB (H, W, 3)."""
    p = _require_file(path, "video file")
    with _open(p, "video file") as c:
        if not c.streams.video:
            raise ReadtalkError(f"{p} has no video stream")
        c.streams.video[0].thread_type = "AUTO"
        try:
            for frame in c.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise ReadtalkError(f"cannot decode video {p}: file is corrupt ({e})") from None


def read_video(path: str | os.PathLike, stop: int | None = None) -> np.ndarray:
    """Decode a video to uint8 RGB (F, H, W, 3): all of it, or its first ``stop`` frames
    (decoding ends there, which is what a training window near the start costs)."""
    frames = list(itertools.islice(iter_frames(path), stop))
    if not frames:
        raise ReadtalkError(f"{path} contains no video frames")
    return np.stack(frames)


# ------------------------------------------------------------------------------------------ images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); alpha is composited over white."""
    p = _require_file(path, "image")
    return decode_image(np.fromfile(str(p), dtype=np.uint8), f"image {p}")


def decode_image(
    data: bytes | np.ndarray, what: str = "image", max_pixels: int | None = None
) -> np.ndarray:
    """Encoded image bytes (PNG/JPEG/BMP/WebP) -> uint8 RGB (H, W, 3); alpha is composited
    over white. ``max_pixels``: refuse larger images (checked from the header, before the
    pixels are decoded)."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else data
    if max_pixels is not None:
        head = cv2.imdecode(buf, cv2.IMREAD_REDUCED_GRAYSCALE_8)
        if head is not None and head.size * 64 > max_pixels:
            raise ReadtalkError(f"{what} is too large: over {max_pixels} pixels")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ReadtalkError(f"cannot read {what}: not a PNG/JPEG/BMP/WebP image or corrupt")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        a = img[..., 3:4].astype(np.float32) / 255.0
        img = (img[..., :3].astype(np.float32) * a + 255.0 * (1 - a)).round().astype(np.uint8)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8)
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise ReadtalkError(f"{what} is too large: over {max_pixels} pixels")
    return img


def encode_jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    """uint8 RGB (H, W, 3) -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write uint8 RGB (H, W, 3) to PNG/JPEG (by suffix), atomically."""
    p = Path(path)
    ok, buf = cv2.imencode(p.suffix or ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ReadtalkError(f"cannot encode image as {p.suffix}")
    tmp = _tmp_name(p)
    buf.tofile(str(tmp))
    os.replace(tmp, p)
    return p


def contact_sheet(images: list[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized uint8 RGB images into one grid image (white padding)."""
    if not images:
        raise ValueError("no images")
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y : y + h, x : x + w] = im
    return sheet
