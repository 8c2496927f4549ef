"""Reading and analysing one video for ``readtalk prepare``: finding the videos under a folder
(``Source``), decoding at 25 fps (``Frames25``), header facts, the aligned 16 kHz speech and
its voiced frames, and pass 1 (``analyse``: scene cuts and face detections).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from readtalk.data import faces as fc
from readtalk.data.prepare_config import PrepareConfig, Rejected
from readtalk.errors import ReadtalkError
from readtalk.media import FPS, SAMPLE_RATE, load_audio

SPF = SAMPLE_RATE // FPS  # audio samples per video frame (640)
VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .vob".split()
)


# ----------------------------------------------------------------------------- finding videos


@dataclass(frozen=True)
class Source:
    path: Path
    rel: str  # path under the videos folder, with "/"
    identity: str
    key: str  # file-name-safe and unique: clip ids are <key>_<n>


def find_videos(videos_dir: Path) -> tuple[list[Source], int]:
    """Video files under ``videos_dir`` (recursively, by suffix; hidden files skipped) and the
    number of other files ignored."""
    out, ignored = [], 0
    for p in sorted(videos_dir.rglob("*")):
        rel = p.relative_to(videos_dir)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            ignored += 1
            continue
        r = rel.as_posix()
        identity = rel.parts[0] if len(rel.parts) > 1 else r
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", r.rsplit(".", 1)[0].replace("/", "__"))[:60]
        key = f"{slug}-{hashlib.sha1(r.encode()).hexdigest()[:6]}"
        out.append(Source(p, r, identity, key))
    return out, ignored


# ----------------------------------------------------------------------------------- decoding


_LUMA_FIRST = frozenset(
    "yuv420p yuvj420p yuv422p yuvj422p yuv444p yuvj444p yuv440p yuvj440p nv12 nv21 gray".split()
)


class Frame:
    """One decoded frame; RGB and luma are converted on first use (most frames of the first
    pass only need a thumbnail of their luma plane)."""

    def __init__(self, frame: av.VideoFrame) -> None:
        self._f = frame
        self._rgb: np.ndarray | None = None
        self.height, self.width = frame.height, frame.width

    @property
    def rgb(self) -> np.ndarray:
        """uint8 (H, W, 3)."""
        if self._rgb is None:
            self._rgb = self._f.to_ndarray(format="rgb24")
        return self._rgb

    def luma_thumb(self) -> np.ndarray:
        """A coarse grey version (every n-th pixel, about 64 px on the short side): 8-bit YUV
        frames give their Y plane without conversion."""
        f = self._f
        if f.format.name in _LUMA_FIRST:
            plane = f.planes[0]
            y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
            y = y[: f.height, : f.width]
        else:
            y = f.to_ndarray(format="gray")
        step = max(1, min(y.shape) // 64)
        return np.ascontiguousarray(y[::step, ::step])


class Frames25:
    """A video's frames resampled to 25 fps by nearest timestamp.

    Output frame k shows the source frame shown at time k / 25 s after the first frame (whose
    source timestamp is ``t0`` once iteration has started); a source frame shown for several
    output frames is yielded as the same ``Frame``. Iterate again to decode again."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        self.path, self.threads = path, threads
        self.t0: float | None = None

    def __iter__(self) -> Iterator[Frame]:
        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    raise Rejected("unreadable", "no video stream")
                v = c.streams.video[0]
                v.thread_type = "AUTO" if self.threads != 1 else "SLICE"
                v.codec_context.thread_count = self.threads
                rate = float(v.average_rate or v.guessed_rate or FPS)
                k, held, held_t = 0, None, 0.0
                for fr in c.decode(v):
                    t = fr.time
                    if held is None:
                        self.t0 = 0.0 if t is None else t
                        held, held_t = Frame(fr), 0.0
                        continue
                    # missing or non-increasing timestamps: assume the nominal frame rate
                    t = held_t + 1 / rate if t is None else max(t - self.t0, held_t + 1e-6)
                    while k / FPS < (held_t + t) / 2:  # nearer to the held frame than to fr
                        yield held
                        k += 1
                    held, held_t = Frame(fr), t
                if held is not None:  # the last frame lasts one source frame period
                    while (k + 0.5) / FPS <= held_t + 1 / rate + 1e-6 or k == 0:
                        yield held
                        k += 1
        except av.error.FFmpegError as e:
            raise Rejected("unreadable", f"cannot decode: {e}") from None


def open_info(path: Path) -> dict:
    """Header facts: duration (s, may be 0 when unknown), size, fps, audio stream start."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise Rejected("unreadable", "no video stream")
            v = c.streams.video[0]
            a = c.streams.audio[0] if c.streams.audio else None
            dur = float(v.duration * v.time_base) if v.duration else (c.duration or 0) / 1e6
            a_start = None
            if a is not None and a.start_time is not None:
                a_start = float(a.start_time * a.time_base)
            return {
                "duration": dur,
                "width": v.width,
                "height": v.height,
                "fps": float(v.average_rate or v.guessed_rate or 0),
                "codec": v.codec_context.name,
                "audio": a is not None,
                "audio_start": a_start,
            }
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise Rejected("unreadable", f"not a media file PyAV can open ({e})") from None


def aligned_audio(path: Path, info: dict, t0: float) -> np.ndarray:
    """The 16 kHz mono speech, shifted so that sample 0 is the first video frame's time."""
    try:
        audio = load_audio(path)
    except ReadtalkError as e:
        raise Rejected("unreadable", f"audio: {e}") from None
    offset = (info["audio_start"] if info["audio_start"] is not None else t0) - t0
    shift = int(round(offset * SAMPLE_RATE))
    if shift > 0:
        audio = np.concatenate([np.zeros(shift, np.float32), audio])
    elif shift < 0:
        audio = audio[-shift:]
    return audio


def voiced_frames(audio: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Per 25-fps frame: does it carry sound well above the recording's floor? Also returns
    the 95th percentile frame level in dBFS (a whole-video loudness)."""
    a = audio[: n * SPF].astype(np.float64).reshape(n, SPF)
    db = 20 * np.log10(np.sqrt((a**2).mean(axis=1)) + 1e-10)
    loud = float(np.percentile(db, 95))
    return db > max(-50.0, loud - 30.0), loud


# ----------------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    n: int  # frames at 25 fps
    width: int
    height: int
    t0: float
    detections: dict[int, list[fc.Face]] = field(default_factory=dict)
    cuts: set[int] = field(default_factory=set)  # frames that start a new shot
    scanned: set[int] = field(default_factory=set)  # detections that searched the whole frame


def analyse(path: Path, cfg: PrepareConfig, threads: int) -> Analysis:
    """Pass 1: decode at 25 fps, find scene cuts and detect faces every ``detect_every`` frames.

    The whole frame is searched on the first frame of every shot, every ``scan_every`` frames
    (new faces, other people) and whenever the face was lost; in between only the
    neighbourhood of the followed face is, about three times cheaper."""
    detector = fc.FaceDetector(cfg.detect_size)
    cut = fc.CutDetector(cfg.cut_threshold)
    frames = Frames25(path, threads)
    an = Analysis(0, 0, 0, 0.0)
    last: fc.Face | None = None  # the followed face at the previous detection
    last_scan = 0
    for k, frame in enumerate(frames):
        an.n, an.height, an.width = k + 1, frame.height, frame.width
        if cut(frame.luma_thumb()):
            an.cuts.add(k)
            last = None
        if k % cfg.detect_every and k not in an.cuts:
            continue
        if last is None or k - last_scan >= cfg.scan_every:
            faces = detector(frame.rgb)
            an.scanned.add(k)
            last_scan = k
        else:
            faces = detector.near(frame.rgb, last)
        an.detections[k] = faces
        if faces:
            near = max(faces, key=lambda f: fc.iou(f.box, last.box)) if last else faces[0]
            last = near if last is None or fc.iou(near.box, last.box) >= 0.2 else faces[0]
        else:
            last = None
    an.t0 = frames.t0 or 0.0
    return an
