"""Live use of the streaming session: ``readtalk live`` (speech from a file or raw PCM on stdin
in, a growing mp4 out) and ``readtalk bench stream`` (latency, lateness and memory of a session
fed like a microphone).

Timing terms (docs/streaming.md): a frame is *ready* when ``Session.push`` / ``flush`` returns
it. ``first_frame_s`` is the wall time from the first sample pushed to the first frame ready.
Playback starts ``buffer_s`` after the first frame is ready (a player's jitter buffer; 0 by
default), at ``start_s = first_frame_s + buffer_s``, the delay the viewer sees between the
first sound and the first picture; frame ``i`` is *due* at ``start_s + i / 25``. Its
*lateness* is ready minus due (negative: early), and a frame ready after it was due is an
*underrun* (the viewer would see a freeze).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from readtalk.data.synthtalk import tts
from readtalk.data.synthtalk.text import sentence
from readtalk.errors import ReadtalkError
from readtalk.media import (
    FPS,
    SAMPLE_RATE,
    LiveVideoWriter,
    PcmJoiner,
    frames_for_samples,
    load_audio,
)
from readtalk.pipeline import Pipeline
from readtalk.profiling import HostWatch
from readtalk.session import Session
from readtalk.settings import GenerationSettings

__all__ = [
    "StreamReport", "bench_stream", "frame_timing", "pcm_pieces", "pieces", "rss_mb",
    "run_live", "speech_for", "speech_source",
]  # fmt: skip

WARM_FRAMES = 250  # 10 s of video: the memory a session settles at is measured after them


# ---------------------------------------------------------------------------------- speech in


def pcm_pieces(stream: BinaryIO, chunk_samples: int) -> Iterator[np.ndarray]:
    """Raw PCM s16le 16 kHz mono from a byte stream (stdin) as float32 pieces of up to
    ``chunk_samples``, each as soon as it has arrived; an odd trailing byte is dropped."""
    joiner = PcmJoiner()
    while True:
        data = stream.read(2 * chunk_samples)
        if not data:
            break
        x = joiner.feed(data)
        if len(x):
            yield x


def pieces(audio: np.ndarray, chunk_samples: int) -> Iterator[np.ndarray]:
    """A finished recording cut into pieces of ``chunk_samples``, as a microphone delivers it."""
    for start in range(0, len(audio), chunk_samples):
        yield audio[start : start + chunk_samples]


def speech_for(seconds: float, seed: int = 0, pause: float = 0.6) -> np.ndarray:
    """About ``seconds`` of espeak-ng speech: SynthTalk sentences with pauses between them
    (pauses test the still-alive face; the benchmark's default speech)."""
    rng = np.random.default_rng(seed)
    voice = tts.Voice("en-us", rate=170)
    parts, total = [], 0
    gap = np.zeros(int(pause * SAMPLE_RATE), np.float32)
    while total < seconds * SAMPLE_RATE:
        audio = tts.synthesize(sentence(rng), voice).audio
        parts += [audio, gap]
        total += len(audio) + len(gap)
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


# ------------------------------------------------------------------------------------ timing


@dataclass
class StreamReport:
    """What one streamed run measured (module docstring for the terms)."""

    audio_s: float
    frames: int
    chunk_ms: float
    paced: bool
    wall_s: float
    first_frame_s: float
    rtf: float
    lateness_p50_s: float
    lateness_p95_s: float
    lateness_max_s: float
    underruns: int
    rss_start_mb: float
    rss_end_mb: float
    clip_frames: int
    steps: int
    buffer_s: float = 0.0  # playback starts this long after the first frame is ready
    start_s: float = 0.0  # first sample -> playback start (first_frame_s + buffer_s)
    schedule: str = "clips"
    # after the first WARM_FRAMES frames (the models' and the allocator's working set is
    # built by then; growth after it is what an hours-long session would keep adding)
    rss_warm_mb: float | None = None
    # when the first late frame was ready (s after the first sample; None: none was late)
    first_underrun_s: float | None = None
    # the machine's own stalls over the run (``profiling.HostWatch``; None where unmeasured):
    # the longest time a separate idle process could not run, and when it began
    host_stall_max_s: float | None = None
    host_stall_at_s: float | None = None
    host_stalls: int | None = None
    host_stall_s: float | None = None
    cpu_steal_s: float | None = None
    memory_full_s: float | None = None
    io_full_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            f"stream: {self.audio_s:.1f} s of speech in {self.chunk_ms:g}-ms pieces "
            f"({'paced like a microphone' if self.paced else 'as fast as possible'}), "
            f"{self.frames} frames, "
            + (
                "rolling schedule"
                if self.schedule == "rolling"
                else f"clips of {self.clip_frames} frames"
            )
            + f", {self.steps} steps",
            f"  first frame {self.first_frame_s:.3f} s after the first sample; playback from "
            f"{self.start_s:.3f} s (buffer {self.buffer_s:.3f} s); real-time factor {self.rtf:.3f}",
            f"  lateness p50 {self.lateness_p50_s:+.3f} s, p95 {self.lateness_p95_s:+.3f} s, "
            f"max {self.lateness_max_s:+.3f} s; underruns {self.underruns}",
            f"  RSS {self.rss_start_mb:.0f} MB -> {self.rss_end_mb:.0f} MB"
            + (
                ""
                if self.rss_warm_mb is None
                else f" ({self.rss_warm_mb:.0f} MB after the first {WARM_FRAMES} frames: "
                f"{self.rss_end_mb - self.rss_warm_mb:+.0f} MB since)"
            ),
            *self._host_line(),
        ]

    def _host_line(self) -> list[str]:
        if self.host_stall_max_s is None:
            return []
        where = "" if self.host_stall_at_s is None else f" at {self.host_stall_at_s:.1f} s"
        late = (
            ""
            if self.first_underrun_s is None
            else f"; first late frame at {self.first_underrun_s:.1f} s"
        )
        extra = ", ".join(
            f"{name} {v:.2f} s"
            for name, v in (("CPU steal", self.cpu_steal_s), ("memory stall", self.memory_full_s))
            if v is not None
        )
        return [
            f"  machine: longest stall of an idle process {self.host_stall_max_s:.3f} s{where} "
            f"({self.host_stalls} over 0.05 s){late}" + (f"; {extra}" if extra else "")
        ]


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of this process (or process ``pid``) now, in MB (Linux /proc; this
    process's peak RSS elsewhere)."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


class _Clock:
    """Ready times of frames against a start, and pacing of the speech on the wall clock."""

    def __init__(self, paced: bool, buffer_s: float = 0.0) -> None:
        if buffer_s < 0:
            raise ReadtalkError(f"the playback buffer must be >= 0 s, got {buffer_s}")
        self.paced = paced
        self.buffer_s = buffer_s
        self.t0 = time.perf_counter()
        self.samples = 0
        self.ready: list[float] = []
        self.rss_warm: float | None = None

    def before_push(self, n: int) -> None:
        """Paced: wait until the piece's last sample would have been spoken."""
        self.samples += n
        if self.paced:
            wait = self.t0 + self.samples / SAMPLE_RATE - time.perf_counter()
            if wait > 0:
                time.sleep(wait)

    def got(self, frames: list) -> None:
        now = time.perf_counter() - self.t0
        before = len(self.ready)
        self.ready.extend([now] * len(frames))
        if before < WARM_FRAMES <= len(self.ready):
            self.rss_warm = rss_mb()

    def report(
        self,
        pipe_settings: GenerationSettings,
        chunk_ms: float,
        rss0: float,
        host: HostWatch | None = None,
    ) -> StreamReport:
        """``host``: the machine's stalls over the run, its times on this clock."""
        wall = time.perf_counter() - self.t0
        audio_s = self.samples / SAMPLE_RATE
        return StreamReport(
            audio_s=audio_s, frames=len(self.ready), chunk_ms=chunk_ms, paced=self.paced,
            wall_s=wall, rtf=wall / max(audio_s, 1e-9), **frame_timing(self.ready, self.buffer_s),
            rss_start_mb=rss0, rss_end_mb=rss_mb(), clip_frames=pipe_settings.clip_frames,
            steps=pipe_settings.steps, rss_warm_mb=self.rss_warm, buffer_s=self.buffer_s,
            schedule=pipe_settings.schedule, **(host.report(self.t0) if host else {}),
        )  # fmt: skip


def frame_timing(ready: list[float] | np.ndarray, buffer_s: float = 0.0) -> dict[str, float | int]:
    """Frame ``k`` ready at ``ready[k]`` seconds after the first sample was sent, played at 25
    fps from ``buffer_s`` after the first frame on: ``first_frame_s``, ``start_s``, the
    lateness (ready time minus play time) p50 / p95 / max, and ``underruns`` (frames not ready
    when due)."""
    ready = np.asarray(ready, np.float64)
    if len(ready) == 0:
        raise ReadtalkError("no frames were generated")
    first = float(ready[0])
    start = first + buffer_s
    late = ready - (start + np.arange(len(ready)) / FPS)
    over = np.flatnonzero(late > 1e-3)
    return {
        "first_underrun_s": float(ready[over[0]]) if len(over) else None,
        "first_frame_s": first, "start_s": start, "lateness_p50_s": float(np.percentile(late, 50)),
        "lateness_p95_s": float(np.percentile(late, 95)), "lateness_max_s": float(late.max()),
        "underruns": int((late > 1e-3).sum()),
    }  # fmt: skip


# --------------------------------------------------------------------------------- the runs


def chunk_samples(chunk_ms: float) -> int:
    """Samples in a piece of ``chunk_ms`` milliseconds (at least one)."""
    if chunk_ms <= 0:
        raise ReadtalkError(f"--chunk-ms must be positive, got {chunk_ms}")
    return max(1, round(chunk_ms * SAMPLE_RATE / 1000))


def _drive(
    session: Session,
    speech: Iterable[np.ndarray],
    clock: _Clock,
    sink: Callable[[np.ndarray | None, list[np.ndarray]], None] | None = None,
) -> None:
    """Push every piece (paced by ``clock``), then flush; ``sink(piece, frames)`` sees each
    piece with the frames it made final (``piece`` None for the flush)."""
    for piece in speech:
        clock.before_push(len(piece))
        frames = session.push(piece)
        clock.got(frames)
        if sink is not None:
            sink(piece, frames)
    frames = session.flush()
    clock.got(frames)
    if sink is not None:
        sink(None, frames)


def run_live(
    pipe: Pipeline,
    image: str | os.PathLike | np.ndarray,
    speech: Iterable[np.ndarray],
    out: str | os.PathLike,
    settings: GenerationSettings | None = None,
    *,
    paced: bool = False,
    chunk_ms: float = 20.0,
    crop: str = "center",
) -> StreamReport:
    """Stream ``speech`` (pieces of 16 kHz float32) through a session into a growing mp4 at
    ``out`` (playable while it grows), the speech muxed as it arrives; returns the timings."""
    session = pipe.stream(image, settings, crop=crop)
    clock, rss0 = _Clock(paced), rss_mb()
    with HostWatch() as host, LiveVideoWriter(out, pipe.size, pipe.size) as vw:

        def write(piece: np.ndarray | None, frames: list[np.ndarray]) -> None:
            if piece is not None:
                vw.write_audio(piece)
            for frame in frames:
                vw.write(frame)

        _drive(session, speech, clock, write)
    return clock.report(session.settings, chunk_ms, rss0, host)


def bench_stream(
    pipe: Pipeline,
    image: str | os.PathLike | np.ndarray,
    audio: np.ndarray,
    settings: GenerationSettings | None = None,
    *,
    chunk_ms: float = 20.0,
    paced: bool = False,
    buffer_s: float = 0.0,
    progress: bool = False,
) -> StreamReport:
    """Feed ``audio`` to a session in ``chunk_ms`` pieces and time every frame (no file),
    played from ``buffer_s`` after the first frame (module docstring); ``progress``: a bar of
    the frames out (on stderr)."""
    chunk = chunk_samples(chunk_ms)
    if buffer_s < 0:
        raise ReadtalkError(f"the playback buffer must be >= 0 s, got {buffer_s}")
    session = pipe.stream(image, settings)
    total = frames_for_samples(len(audio))
    with HostWatch() as host:
        clock, rss0 = _Clock(paced, buffer_s), rss_mb()  # the watcher's start not timed
        with tqdm(total=total, unit="frame", desc="stream", disable=not progress) as bar:
            _drive(session, pieces(audio, chunk), clock, lambda _p, f: bar.update(len(f)))
    return clock.report(session.settings, chunk_ms, rss0, host)


def speech_source(audio: str, chunk_ms: float) -> Iterator[np.ndarray]:
    """``readtalk live --audio``: a file's speech in pieces, or ``-``: PCM s16le from stdin."""
    chunk = chunk_samples(chunk_ms)
    if audio == "-":
        return pcm_pieces(sys.stdin.buffer, chunk)
    return pieces(load_audio(Path(audio)), chunk)
