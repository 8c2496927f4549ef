"""``readtalk prepare``: a folder of ordinary talking videos -> a training dataset.

    readtalk prepare --videos raw/ --out data/real --size 512 --frames 121 --workers 2

Every video PyAV can read (any container, codec, frame rate and resolution) is resampled to
25 fps, its audio to 16 kHz mono; a face is detected every few frames and tracked in between
(``readtalk.data.faces``), and the footage is cut into clips of ``frames`` (8k+1) frames, each
a smoothed square crop around the face resized to ``size``. The output has SynthTalk's layout::

    video/<id>.mp4   H.264 + AAC, 25 fps, the clip's 16 kHz speech muxed
    audio/<id>.wav   the same speech, 16-bit PCM, exactly frames * 640 samples
    ref/<id>.png     the reference portrait: a crop from *another* part of the same video
    manifest.jsonl   id, split, identity, video, ref, audio, frames, size, duration,
                     source, start, end, ref_time, ref_from, identity_name (no ``track``:
                     real footage has no ground truth)
    rejected.jsonl   what was dropped and why (source, reason, detail, start, end)
    prepare.json     the summary; settings.json the settings; done/<video>.json per video

Identity: the first-level subfolder under ``--videos`` when a video sits in one (a folder per
person), otherwise the video itself. The split is by identity (``test_fraction`` of them).

Resumable: a video is finished when its ``done/`` marker exists (written after all its clips);
re-running skips finished videos and redoes the others. Every file is written under a staging
name and renamed into place, so a killed run never leaves a half-written clip under its final
name; the manifest lists only clips of finished videos. ``docs/prepare.md`` has the details.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from readtalk.data import faces as fc
from readtalk.errors import ReadtalkError
from readtalk.media import FPS, SAMPLE_RATE, VideoWriter, load_audio, save_wav, write_image

SPF = SAMPLE_RATE // FPS  # audio samples per video frame (640)
VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .vob".split()
)
# Why footage is dropped. Whole videos: unreadable, too_short, no_audio, silent, no_face, error.
# Windows of ``frames`` frames inside a usable video: every reason but unreadable and error.
REASONS = {
    "unreadable": "not a video PyAV can decode, or corrupt",
    "too_short": "shorter than one clip",
    "no_audio": "no audio stream",
    "silent": "too little speech",
    "no_face": "no face found (or lost for some frames)",
    "several_faces": "more than one face",
    "face_too_small": "the crop would be upscaled too much",
    "scene_cut": "a scene cut inside the window",
    "face_jump": "the tracked face jumped (another face, or an undetected cut)",
    "error": "an unexpected error (a bug); retried on the next run",
}


@dataclass(frozen=True)
class PrepareConfig:
    size: int = 512  # output frame size (multiple of 32)
    frames: int = 121  # frames per clip, 8k+1
    workers: int = 0  # processes (0: all cores); one video per process at a time
    detect_every: int = 5  # run the face detector every this many 25-fps frames
    detect_size: int = 480  # detector input's short side (faces below ~1/6 of it are missed)
    scan_every: int = 25  # search the whole frame this often (else only near the face)
    max_gap: int = 15  # frames without a detection a track may bridge
    margin: float = 2.0  # crop side / face box side (2.0 frames the head like SynthTalk)
    lift: float = 0.15  # crop centre above the face box centre, in face sizes
    smooth: float = 1.0  # Gaussian sigma of the crop path, seconds (0: one fixed crop per clip)
    max_upscale: float = 2.5  # reject windows whose crop would be enlarged more than this
    min_speech: float = 0.2  # reject windows with a smaller fraction of voiced frames
    cut_threshold: float = 0.1  # thumbnail change that counts as a scene cut
    test_fraction: float = 0.1  # of identities
    crf: int = 18

    def validate(self) -> None:
        if self.size < 64 or self.size % 32:
            raise ReadtalkError(f"--size must be a multiple of 32 and >= 64, got {self.size}")
        if self.frames < 9 or (self.frames - 1) % 8:
            k = max(1, (self.frames - 1) // 8)
            raise ReadtalkError(
                f"--frames must be 8k+1 and >= 9 (e.g. {8 * k + 1} or {8 * k + 9}), "
                f"got {self.frames}"
            )
        if self.workers < 0:
            raise ReadtalkError(f"--workers must be >= 0, got {self.workers}")
        if self.detect_every < 1 or self.max_gap < self.detect_every or self.scan_every < 1:
            raise ReadtalkError("need detect_every >= 1, max_gap >= detect_every, scan_every >= 1")
        if self.detect_size < 80:
            raise ReadtalkError(f"detect_size must be >= 80, got {self.detect_size}")
        if self.margin < 1 or self.smooth < 0 or self.max_upscale <= 0:
            raise ReadtalkError("margin must be >= 1, smooth >= 0 and max_upscale > 0")
        if not 0 <= self.min_speech <= 1 or not 0 <= self.test_fraction < 1:
            raise ReadtalkError("min_speech must be in [0, 1] and test_fraction in [0, 1)")

    def settings(self) -> dict:
        """What changes the output (everything but the number of workers)."""
        d = asdict(self)
        del d["workers"]
        return d


class Rejected(Exception):
    """A whole video is dropped for ``reason`` (a key of REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


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


# ----------------------------------------------------------------------------------- planning


@dataclass
class ClipPlan:
    start: int
    boxes: np.ndarray  # (frames, 3) crop boxes (cx, cy, side) in source pixels
    ref_frame: int
    ref_box: np.ndarray  # (3,)
    ref_from: str  # "other part" | "same clip"


def plan_clips(
    an: Analysis, voiced: np.ndarray, cfg: PrepareConfig
) -> tuple[list[ClipPlan], list[tuple[str, int, int, str]]]:
    """Place clips greedily from the start of the video and say why each dropped window was
    dropped: (reason, first frame, end frame, detail)."""
    n, F = len(voiced), cfg.frames
    every = cfg.detect_every
    tracks, jumps = fc.link_tracks(an.detections, an.cuts, n, every, cfg.max_gap)
    track_of = np.full(n, -1)
    raw = np.zeros((n, 3))
    smooth = np.zeros((n, 3))
    for i, tr in enumerate(tracks):
        s, e = tr.start, min(tr.end, n)
        if e <= s:
            continue
        track_of[s:e] = i
        r = tr.raw_boxes()[: e - s]
        raw[s:e] = r
        smooth[s:e] = fc.gaussian_smooth(r, cfg.smooth * FPS)
    crops = fc.crop_boxes(smooth, cfg.margin, cfg.lift, an.width, an.height)
    # the tracked face at each detection frame, and whether anyone else is there
    main = {k: f for tr in tracks for k, f in zip(tr.frames, tr.faces, strict=True) if k < n}
    multi = {
        k: fc.other_faces(an.detections[k], f, min_rel_size=0.5, min_score=0.0) > 0
        for k, f in main.items()
        if k in an.scanned
    }
    max_side = min(an.width, an.height)

    def upscale(size: float) -> float:
        return cfg.size / min(cfg.margin * size, max_side)

    plans: list[ClipPlan] = []
    drops: list[tuple[str, int, int, str]] = []
    bounds = sorted(an.cuts | jumps)
    s = 0
    while s + F <= n:
        e = s + F
        inner = [b for b in bounds if s < b < e]
        if inner:
            b = inner[0]
            drops.append(("scene_cut" if b in an.cuts else "face_jump", s, b, ""))
            s = b
            continue
        missing = np.flatnonzero(track_of[s:e] < 0)
        if missing.size:
            drops.append(("no_face", s, s + int(missing[-1]) + 1, ""))
            s += int(missing[-1]) + 1
            continue
        change = np.flatnonzero(np.diff(track_of[s:e]))
        if change.size:  # two tracks meet without a gap: treat as a jump
            drops.append(("face_jump", s, s + int(change[0]) + 1, ""))
            s += int(change[0]) + 1
            continue
        # whole-frame searches are sparse (and the detector misses faces now and then), so
        # they are counted from 1 s before the window to 1 s after it
        ks = [k for k in multi if s - FPS <= k < e + FPS]
        crowded = np.mean([multi[k] for k in ks]) if ks else 0.0
        up = upscale(float(np.median(raw[s:e, 2])))
        speech = float(voiced[s:e].mean())
        if crowded >= 0.3:
            drops.append(("several_faces", s, e, f"in {crowded:.0%} of whole-frame searches"))
        elif up > cfg.max_upscale:
            drops.append(("face_too_small", s, e, f"crop upscaled {up:.1f}x"))
        elif speech < cfg.min_speech:
            drops.append(("silent", s, e, f"{speech:.0%} voiced frames"))
        else:
            if cfg.smooth > 0:
                boxes = crops[s:e]
            else:  # one fixed crop: mean centre, median size
                face = np.array([*raw[s:e, :2].mean(0), np.median(raw[s:e, 2])])[None]
                boxes = np.repeat(
                    fc.crop_boxes(face, cfg.margin, cfg.lift, an.width, an.height), F, axis=0
                )
            ref, ref_from = _pick_reference(main, multi, s, e, upscale, cfg.max_upscale)
            ref_box = crops[ref] if track_of[ref] >= 0 else boxes[0]
            plans.append(ClipPlan(s, boxes, ref, ref_box, ref_from))
        s = e
    return plans, _merge(drops)


def _pick_reference(
    main: dict[int, fc.Face], multi: dict[int, bool], s: int, e: int, upscale, max_up: float
) -> tuple[int, str]:
    """The most frontal (highest detector score) single-face detection frame at least 1 s away
    from the clip [s, e); failing that, any outside it; failing that, the clip's own best."""
    good = {k: f for k, f in main.items() if not multi.get(k) and upscale(f.size) <= max_up}
    for cond in (lambda k: k < s - FPS or k >= e + FPS, lambda k: k < s or k >= e):
        cand = [k for k in good if cond(k)]
        if cand:
            return max(cand, key=lambda k: good[k].score), "other part"
    inside = [k for k in main if s <= k < e] or [s]
    return max(inside, key=lambda k: main[k].score if k in main else 0.0), "same clip"


def _merge(drops: list[tuple[str, int, int, str]]) -> list[tuple[str, int, int, str]]:
    """Join consecutive drops with the same reason (details of the first are kept)."""
    out: list[tuple[str, int, int, str]] = []
    for d in drops:
        if out and out[-1][0] == d[0] and out[-1][2] == d[1]:
            out[-1] = (d[0], out[-1][1], d[2], out[-1][3])
        else:
            out.append(d)
    return out


# ------------------------------------------------------------------------------------ writing


def write_clips(
    src: Source,
    plans: list[ClipPlan],
    audio: np.ndarray,
    out: Path,
    cfg: PrepareConfig,
    threads: int,
) -> list[dict]:
    """Pass 2: decode again and write each planned clip's mp4, wav and reference png."""
    F, S = cfg.frames, cfg.size
    ids = [f"{src.key}_{j:04d}" for j in range(len(plans))]
    by_start = {p.start: j for j, p in enumerate(plans)}
    refs: dict[int, list[int]] = {}
    for j, p in enumerate(plans):
        refs.setdefault(p.ref_frame, []).append(j)
    ref_img: dict[int, np.ndarray] = {}
    last = max(max(p.start + F for p in plans), max(refs) + 1)
    writer: VideoWriter | None = None
    j_open = -1
    try:
        for k, frame in enumerate(Frames25(src.path, threads)):
            if k >= last:
                break
            for j in refs.get(k, ()):
                ref_img[j] = fc.crop_frame(frame.rgb, plans[j].ref_box, S)
            if k in by_start:
                j_open = by_start[k]
                s = plans[j_open].start
                path = out / "video" / f"{ids[j_open]}.mp4"
                writer = VideoWriter(path, S, S, crf=cfg.crf, threads=threads)
                writer.add_audio(audio[s * SPF : (s + F) * SPF])
            if writer is not None:
                p = plans[j_open]
                writer.write(fc.crop_frame(frame.rgb, p.boxes[k - p.start], S))
                if writer.frames_written == F:
                    writer.close()
                    writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None or len(ref_img) < len(plans):  # the second decode came up short
        if writer is not None:
            writer.abort()
        raise Rejected("unreadable", "the video decoded to fewer frames the second time")
    records = []
    for j, p in enumerate(plans):
        save_wav(out / "audio" / f"{ids[j]}.wav", audio[p.start * SPF : (p.start + F) * SPF])
        write_image(out / "ref" / f"{ids[j]}.png", ref_img[j])
        records.append(
            {
                "id": ids[j],
                "video": f"video/{ids[j]}.mp4",
                "ref": f"ref/{ids[j]}.png",
                "audio": f"audio/{ids[j]}.wav",
                "frames": F,
                "size": S,
                "duration": F / FPS,
                "source": src.rel,
                "start": round(p.start / FPS, 3),
                "end": round((p.start + F) / FPS, 3),
                "ref_time": round(p.ref_frame / FPS, 3),
                "ref_from": p.ref_from,
                "identity_name": src.identity,
            }
        )
    return records


# ---------------------------------------------------------------------------------- one video


def _reject(src: Source, reason: str, detail: str, start=None, end=None) -> dict:
    return {
        "source": src.rel,
        "reason": reason,
        "detail": detail,
        "start": start,
        "end": end,
    }


def process_video(src: Source, out: Path, cfg: PrepareConfig, threads: int = 0) -> dict:
    """Turn one video into clips under ``out`` and return its result (clips, drops, seconds of
    footage); also writes the result as its ``done/`` marker, last."""
    t_start = time.perf_counter()
    stat = src.path.stat()
    res = {
        "source": src.rel,
        "identity": src.identity,
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "settings": cfg.settings(),
        "duration": 0.0,
        "clips": [],
        "rejected": [],
    }
    F = cfg.frames
    try:
        if stat.st_size == 0:
            raise Rejected("unreadable", "empty file")
        info = open_info(src.path)
        res["duration"] = round(info["duration"], 3)
        if 0 < info["duration"] * FPS < F - 1:
            raise Rejected("too_short", f"{info['duration']:.2f} s < {F / FPS:.2f} s")
        if not info["audio"]:
            raise Rejected("no_audio", "the file has no audio stream")
        an = analyse(src.path, cfg, threads)
        res["duration"] = round(an.n / FPS, 3)
        audio = aligned_audio(src.path, info, an.t0)
        n = min(an.n, len(audio) // SPF)
        if n < F:
            what = "video" if an.n < F else "audio"
            raise Rejected("too_short", f"{what}: {n / FPS:.2f} s < {F / FPS:.2f} s")
        voiced, loud = voiced_frames(audio, n)
        if loud < -50:
            raise Rejected("silent", f"95th-percentile level {loud:.0f} dBFS")
        if not any(an.detections.values()):
            raise Rejected("no_face", f"no face in {len(an.detections)} detections")
        plans, drops = plan_clips(an, voiced, cfg)
        res["rejected"] = [
            _reject(src, r, d, round(a / FPS, 3), round(b / FPS, 3)) for r, a, b, d in drops
        ]
        if plans:
            res["clips"] = write_clips(src, plans, audio, out, cfg, threads)
    except Rejected as e:
        res["clips"] = []
        res["rejected"] = [_reject(src, e.reason, e.detail)]
    res["seconds"] = round(time.perf_counter() - t_start, 2)
    _write_json(res, out / "done" / f"{src.key}.json")
    return res


def _job(args: tuple[Source, str, PrepareConfig, int]) -> dict:
    src, out, cfg, threads = args
    if threads == 1:
        cv2.setNumThreads(1)
    try:
        return process_video(src, Path(out), cfg, threads)
    except Exception as e:  # a bug: report it, write no marker (so the next run retries)
        tb = traceback.format_exc(limit=-3).strip().replace("\n", " | ")
        return {
            "source": src.rel,
            "identity": src.identity,
            "duration": 0.0,
            "clips": [],
            "rejected": [_reject(src, "error", f"{type(e).__name__}: {e} [{tb}]")],
            "error": True,
        }


# ---------------------------------------------------------------------------- the whole run


def _write_json(obj, path: Path, lines: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if lines:
        tmp.write_text("".join(json.dumps(o) + "\n" for o in obj))
    else:
        tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _open_out(out: Path, cfg: PrepareConfig) -> None:
    settings = out / "settings.json"
    if settings.is_file():
        old = json.loads(settings.read_text())
        if old != cfg.settings():
            diff = sorted(k for k in {*old, *cfg.settings()} if old.get(k) != cfg.settings().get(k))
            raise ReadtalkError(
                f"{out} was prepared with other settings ({', '.join(diff)}); "
                "use the same settings to resume, or a new --out"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReadtalkError(f"output folder {out} exists, is not empty and is not a prepare run")
    for sub in ("video", "audio", "ref", "done"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not settings.is_file():
        _write_json(cfg.settings(), settings)
    for sub in ("video", "audio", "ref", "done", "."):  # staging files of a killed run
        for p in (out / sub).glob(".*.partial-*"):
            p.unlink(missing_ok=True)


def _load_done(marker: Path, src: Source, cfg: PrepareConfig) -> dict | None:
    """A finished video's result, or None when it must be (re)done; stale clips are removed."""
    if not marker.is_file():
        return None
    try:
        res = json.loads(marker.read_text())
    except json.JSONDecodeError:
        res = {}
    stat = src.path.stat()
    if (
        res.get("bytes") == stat.st_size
        and res.get("mtime_ns") == stat.st_mtime_ns
        and res.get("settings") == cfg.settings()
    ):
        return res
    for rec in res.get("clips", []):  # the source changed: its old clips go
        for k in ("video", "audio", "ref"):
            (marker.parent.parent / rec[k]).unlink(missing_ok=True)
    marker.unlink()
    return None


def _splits(identities: list[str], test_fraction: float) -> set[str]:
    """Held-out identities: a stable hash order, so the choice does not depend on the order the
    videos were processed in (at least one each way when there are two or more)."""
    m = len(identities)
    n_test = 0 if m < 2 or test_fraction == 0 else min(m - 1, max(1, round(test_fraction * m)))
    order = sorted(identities, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    return set(order[:n_test])


def prepare(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: PrepareConfig | None = None,
    progress: bool = True,
) -> dict:
    """Turn every video under ``videos_dir`` into clips in ``out_dir`` (new, or an earlier run
    to resume) and return the summary (also written to ``out_dir/prepare.json``)."""

    cfg = cfg or PrepareConfig()
    cfg.validate()
    videos_dir, out = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise ReadtalkError(f"videos folder not found: {videos_dir}")
    sources, ignored = find_videos(videos_dir)
    if not sources:
        raise ReadtalkError(
            f"no video files in {videos_dir} (looked for {', '.join(sorted(VIDEO_SUFFIXES))})"
        )
    _open_out(out, cfg)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    todo = []
    for src in sources:
        res = _load_done(out / "done" / f"{src.key}.json", src, cfg)
        if res is None:
            todo.append(src)
        else:
            results[src.rel] = res
    workers = max(1, min(cfg.workers or os.cpu_count() or 1, len(todo)))
    threads = 1 if workers > 1 else 0
    jobs = [(src, str(out), cfg, threads) for src in todo]
    bar = tqdm(
        total=len(sources), initial=len(results), desc="prepare", unit="video", disable=not progress
    )
    clips = sum(len(r["clips"]) for r in results.values())

    def done(res: dict) -> None:
        nonlocal clips
        results[res["source"]] = res
        clips += len(res["clips"])
        bar.set_postfix(clips=clips)
        bar.update()

    if workers == 1:
        for job in jobs:
            done(_job(job))
    elif jobs:
        with mp.get_context("spawn").Pool(workers) as pool:
            for res in pool.imap_unordered(_job, jobs):
                done(res)
    bar.close()
    elapsed = time.perf_counter() - t0
    summary = _finish(out, sources, results, cfg, ignored)
    summary["videos_dir"] = str(videos_dir.resolve())
    processed = sum(results[s.rel]["duration"] for s in todo)
    summary.update(
        videos_processed=len(todo),
        videos_resumed=len(sources) - len(todo),
        workers=workers,
        seconds=round(elapsed, 2),
        realtime_factor=round(processed / elapsed, 3) if todo else None,
    )
    _write_json(summary, out / "prepare.json")
    return summary


def _finish(
    out: Path, sources: list[Source], results: dict[str, dict], cfg: PrepareConfig, ignored: int
) -> dict:
    """Write manifest.jsonl and rejected.jsonl from the per-video results; the summary."""
    ordered = [results[s.rel] for s in sources]
    with_clips = sorted({r["identity"] for r in ordered if r["clips"]})
    held_out = _splits(with_clips, cfg.test_fraction)
    index = {name: i for i, name in enumerate(with_clips)}
    manifest, rejected = [], []
    for r in ordered:
        for rec in r["clips"]:
            name = rec["identity_name"]
            manifest.append(
                {
                    "id": rec["id"],
                    "split": "test" if name in held_out else "train",
                    "identity": index[name],
                    **{k: v for k, v in rec.items() if k != "id"},
                }
            )
        rejected.extend(r["rejected"])
    _write_json(manifest, out / "manifest.jsonl", lines=True)
    _write_json(rejected, out / "rejected.jsonl", lines=True)
    videos, windows, hours = Counter(), Counter(), Counter()
    for rej in rejected:
        if rej["start"] is None:
            videos[rej["reason"]] += 1
            dur = results[rej["source"]]["duration"]
        else:
            windows[rej["reason"]] += 1
            dur = rej["end"] - rej["start"]
        hours[rej["reason"]] += dur / 3600
    hours_in = sum(r["duration"] for r in ordered) / 3600
    return {
        "dataset": "prepared",
        "config": asdict(cfg),
        "videos": len(sources),
        "videos_with_clips": sum(bool(r["clips"]) for r in ordered),
        "files_ignored": ignored,
        "clips": len(manifest),
        "train": sum(m["split"] == "train" for m in manifest),
        "test": sum(m["split"] == "test" for m in manifest),
        "identities": len(with_clips),
        "test_identities": sorted(held_out),
        "hours_in": round(hours_in, 4),
        "hours_out": round(len(manifest) * cfg.frames / FPS / 3600, 4),
        "dropped": {
            "videos": dict(videos),
            "windows": dict(windows),
            "hours": {k: round(v, 4) for k, v in hours.items()},
        },
        "errors": [rej["detail"] for rej in rejected if rej["reason"] == "error"],
    }


# ---------------------------------------------------------------------------------------- CLI


def format_summary(s: dict, out: str | os.PathLike) -> str:
    lines = [
        f"prepared {out}: {s['clips']} clips ({s['train']} train, {s['test']} test, "
        f"{s['identities']} identities) from {s['videos_with_clips']} of {s['videos']} videos; "
        f"{s['hours_in'] * 60:.1f} min of footage in, {s['hours_out'] * 60:.1f} min out",
    ]
    if s.get("videos_resumed"):
        lines.append(f"  {s['videos_resumed']} videos were already done (resumed)")
    if s.get("realtime_factor"):
        lines.append(
            f"  {s['seconds']:.1f} s for {s['videos_processed']} videos "
            f"({s['realtime_factor']:.2f}x real time, {s['workers']} workers)"
        )
    d = s["dropped"]
    for reason in REASONS:
        nv, nw = d["videos"].get(reason, 0), d["windows"].get(reason, 0)
        if nv or nw:
            lines.append(
                f"  dropped, {reason:<15} {nv:4d} videos {nw:5d} windows "
                f"{d['hours'].get(reason, 0) * 60:8.1f} min  ({REASONS[reason]})"
            )
    lines.extend(f"  error: {e}" for e in s["errors"][:5])
    return "\n".join(lines)
