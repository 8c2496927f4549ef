"""A pipecat adapter: the bot's TTS audio in, the talking avatar's video frames out.

``ReadtalkAvatar`` is a pipecat ``FrameProcessor`` that sits after the TTS service. It turns
the TTS audio (``TTSAudioRawFrame``, any ``OutputAudioRawFrame`` going downstream; s16le at any
sample rate and channel count) into ``OutputImageRawFrame``s (RGB, ``pipe.size`` square), one
per 40 ms of speech, in order, and passes the audio on so that the transport plays it::

    from pipecat.pipeline.pipeline import Pipeline
    from readtalk.serve.pipecat import ReadtalkAvatar

    avatar = ReadtalkAvatar(image="me.jpg", seed=0)  # the demo model and portrait by default
    pipeline = Pipeline([
        transport.input(), stt, user_aggregator, llm, tts,
        avatar,
        transport.output(),
        assistant_aggregator,
    ])
    # transport params: video_out_enabled=True, video_out_is_live=True,
    # video_out_width=avatar.size, video_out_height=avatar.size, video_out_framerate=25

One avatar session (``Pipeline.stream``) runs for the whole conversation: ``TTSStoppedFrame``
does not end it (a bot speaks many utterances), ``EndFrame`` flushes it (the remaining frames
go out before the ``EndFrame``), ``CancelFrame`` drops it. Frames come in bursts of a clip once
that clip's audio has arrived, so the tail of an utterance shows when the next one's audio
comes (or at the end). The model work runs in a worker thread, fed by one task with a queue
(pipecat interruptions do not cancel it, so the video timeline stays one frame per 40 ms of
all the audio received).

Needs the optional extra: ``pip install 'readtalk[pipecat]'``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import soxr

try:
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        OutputAudioRawFrame,
        OutputImageRawFrame,
        StartFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
except ImportError:
    raise ImportError(
        "readtalk.serve.pipecat needs pipecat: pip install 'readtalk[pipecat]' "
        "(or pip install 'pipecat-ai>=1.14,<2')"
    ) from None

from readtalk.demo import demo_portrait
from readtalk.media import SAMPLE_RATE, SAMPLES_PER_FRAME, pcm16_to_float
from readtalk.pipeline import Pipeline

__all__ = ["ReadtalkAvatar", "pcm16_to_mono"]

_END = object()  # the worker queue's end marker


def pcm16_to_mono(audio: bytes, num_channels: int = 1) -> np.ndarray:
    """Interleaved s16le PCM -> float32 mono in [-1, 1) (channels averaged; a trailing partial
    sample frame is dropped)."""
    ch = max(int(num_channels), 1)
    x = pcm16_to_float(audio[: len(audio) // (2 * ch) * (2 * ch)])
    return x if ch == 1 else x.reshape(-1, ch).mean(axis=1, dtype=np.float32)


class _To16k:
    """Streaming resampler to 16 kHz mono that follows the input rate (a new rate drains the
    old resampler first); 16 kHz input passes through untouched."""

    def __init__(self) -> None:
        self._rate = SAMPLE_RATE
        self._stream: soxr.ResampleStream | None = None

    def __call__(self, x: np.ndarray, rate: int) -> np.ndarray:
        head = self.drain() if rate != self._rate else None
        self._rate = rate
        if rate != SAMPLE_RATE and self._stream is None:
            self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        y = x if self._stream is None else self._stream.resample_chunk(x)
        return y if head is None or not len(head) else np.concatenate([head, y])

    def drain(self) -> np.ndarray:
        """The resampler's delayed tail (end of the stream); the next call starts afresh."""
        stream, self._stream = self._stream, None
        if stream is None:
            return np.zeros(0, np.float32)
        return stream.resample_chunk(np.zeros(0, np.float32), last=True)


class ReadtalkAvatar(FrameProcessor):
    """TTS audio -> avatar video frames for pipecat transports (module docstring).

    ``pipe``: a loaded ``readtalk.Pipeline`` (None: ``Pipeline.from_pretrained()``, the demo
    model). ``image``: the portrait, a path or uint8 (H, W, 3) RGB (None: the demo portrait).
    ``seed`` and ``**settings`` (``steps``, ``crop``, ...) go to ``pipe.stream``.
    """

    def __init__(
        self,
        pipe: Pipeline | None = None,
        image: Any = None,
        seed: int = 0,
        *,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(name=name)
        self.pipe = pipe if pipe is not None else Pipeline.from_pretrained()
        if image is None:
            image = demo_portrait(self.pipe.size)
        self._session = self.pipe.stream(image, seed=seed, **settings)
        self._resample = _To16k()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self.frames_out = 0  # image frames pushed so far

    @property
    def size(self) -> int:
        """The video frames' width and height (pixels)."""
        return self.pipe.size

    @property
    def samples_in(self) -> int:
        """16 kHz samples given to the avatar session so far."""
        return self._session.samples_in

    # ---- pipecat

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._start()
        elif isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._feed(frame)
        elif isinstance(frame, EndFrame):
            await self._finish()
        elif isinstance(frame, CancelFrame):
            await self._cancel()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        """Pipeline teardown: the session is dropped if it is still open."""
        await super().cleanup()
        await self._cancel()

    # ---- the worker

    def _feed(self, frame: OutputAudioRawFrame) -> None:
        if self._session.closed:  # audio after the end: played, not animated
            return
        x = self._resample(pcm16_to_mono(frame.audio, frame.num_channels), frame.sample_rate)
        if len(x):
            self._start()
            self._queue.put_nowait(x)

    def _start(self) -> None:
        if self._worker is None and not self._session.closed:
            self._worker = self.create_task(self._work(), "avatar")

    async def _work(self) -> None:
        """Feeds the session the queued audio until the end marker and pushes the frames that
        became final."""
        while True:
            parts, end = await self._take()
            if parts:
                await self._run(self._session.push, np.concatenate(parts))
            if end:
                return

    async def _take(self) -> tuple[list[np.ndarray], bool]:
        """All the audio waiting in the queue (one push while the model was busy; waits for at
        least one item) and whether the end marker came."""
        parts, item = [], await self._queue.get()
        while item is not _END:
            parts.append(item)
            if self._queue.empty():
                return parts, False
            item = self._queue.get_nowait()
        return parts, True

    async def _run(self, fn: Any, *args: Any) -> None:
        try:
            frames = await asyncio.to_thread(fn, *args)
        except Exception as e:  # bad audio, a closed session: report, keep the pipeline up
            await self.push_error(f"{self}: avatar generation failed: {e}", exception=e)
            return
        for f in frames:
            h, w = f.shape[:2]
            image = OutputImageRawFrame(image=f.tobytes(), size=(w, h), format="RGB")
            await self.push_frame(image)
            self.frames_out += 1

    async def _finish(self) -> None:
        """End of the conversation: the resampler's tail, the queued audio, then the rest of the
        last clip (``flush``), all pushed before the caller forwards the ``EndFrame``."""
        if self._session.closed:
            return
        tail = self._resample.drain()  # what the resampler still holds back
        if len(tail):
            self._start()
            self._queue.put_nowait(tail)
        if self._worker is not None:
            self._queue.put_nowait(_END)
            await self._worker
            self._worker = None
        n = self.samples_in
        if 0 < n < SAMPLES_PER_FRAME:  # flush needs one frame's audio: pad the first 40 ms
            await self._run(self._session.push, np.zeros(SAMPLES_PER_FRAME - n, np.float32))
        if self.samples_in:
            await self._run(self._session.flush)
        else:
            await asyncio.to_thread(self._session.close)

    async def _cancel(self) -> None:
        """Drop the session at once (a push running in its thread ends first)."""
        if self._worker is not None:
            await self.cancel_task(self._worker)
            self._worker = None
        if not self._session.closed:
            await asyncio.to_thread(self._session.close)
