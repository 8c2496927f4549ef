"""readtalk.serve.pipecat: the pipecat adapter in a real pipecat pipeline (no transport, no
network): TTS audio frames in, the avatar's image frames out, the same as a direct session."""

import asyncio
import importlib
import sys

import numpy as np
import pytest
import soxr

pytest.importorskip("pipecat")

from pipecat.frames.frames import (
    EndFrame,
    Frame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline as PipecatPipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from readtalk import Pipeline
from readtalk.demo import demo_portrait
from readtalk.live import speech_for
from readtalk.media import frames_for_samples
from readtalk.serve.pipecat import ReadtalkAvatar, pcm16_to_mono

STEPS = 2  # fewer Euler steps: a quick test


class Sink(FrameProcessor):
    """Collects the image and TTS audio frames that reach the end of the pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[OutputImageRawFrame] = []
        self.audio: list[TTSAudioRawFrame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            self.images.append(frame)
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio.append(frame)
        await self.push_frame(frame, direction)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_pretrained()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speech_for(3.0)  # float32 16 kHz espeak-ng speech with a pause


def s16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 32767 / 32768) * 32768).round().astype("<i2").tobytes()


def tts_frames(x: np.ndarray, rate: int, channels: int = 1) -> list[TTSAudioRawFrame]:
    """``x`` (float32 mono at ``rate``) as 20 ms s16le TTS chunks (the channels duplicated)."""
    step = rate // 50
    return [
        TTSAudioRawFrame(audio=s16(np.repeat(x[i : i + step], channels)), sample_rate=rate,
                         num_channels=channels)
        for i in range(0, len(x), step)
    ]  # fmt: skip


def run(avatar: ReadtalkAvatar, frames: list[Frame], rate: int) -> Sink:
    sink = Sink()
    worker = PipelineWorker(
        PipecatPipeline([avatar, sink]), params=PipelineParams(audio_out_sample_rate=rate),
        enable_rtvi=False, idle_timeout_secs=None,
    )  # fmt: skip

    async def main() -> None:
        await worker.queue_frames([*frames, EndFrame()])
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    asyncio.run(main())
    return sink


def check_images(images: list[OutputImageRawFrame], size: int) -> None:
    for f in images:
        assert f.size == (size, size)
        assert f.format == "RGB"
        assert len(f.image) == size * size * 3


def test_16k_frames_match_a_direct_session(pipe, speech):
    """16 kHz TTS audio (no resampling): the frames are the direct session's frames."""
    x = pcm16_to_mono(s16(speech))  # what the adapter sees: s16-quantised speech
    frames = tts_frames(speech, 16000)
    avatar = ReadtalkAvatar(pipe, steps=STEPS)
    sink = run(avatar, frames, 16000)

    assert avatar.samples_in == len(x)
    assert len(sink.images) == frames_for_samples(len(x)) == avatar.frames_out
    assert len(sink.audio) == len(frames)
    assert [f.audio for f in sink.audio] == [f.audio for f in frames]
    check_images(sink.images, pipe.size)

    session = pipe.stream(demo_portrait(pipe.size), seed=0, steps=STEPS)
    want = session.push(x) + session.flush()
    assert len(want) == len(sink.images)
    got = np.stack([np.frombuffer(f.image, np.uint8).reshape(want[0].shape) for f in sink.images])
    diff = np.abs(got.astype(np.int16) - np.stack(want).astype(np.int16))
    assert diff.max() <= 2


def test_24k_stereo_two_utterances(pipe, speech):
    """24 kHz stereo TTS audio in two utterances: TTSStoppedFrame keeps the session, the
    resampler's tail is flushed at the end, one frame per started 40 ms of speech."""
    x24 = soxr.resample(speech, 16000, 24000).astype(np.float32)
    half = len(x24) // 2
    first, second = tts_frames(x24[:half], 24000, 2), tts_frames(x24[half:], 24000, 2)
    frames = [TTSStartedFrame(), *first, TTSStoppedFrame(), TTSStartedFrame(), *second,
              TTSStoppedFrame()]  # fmt: skip
    avatar = ReadtalkAvatar(pipe, demo_portrait(pipe.size), steps=STEPS)
    sink = run(avatar, frames, 24000)

    assert abs(avatar.samples_in - len(speech)) <= 2  # 24 -> 16 kHz, the tail included
    assert len(sink.images) == frames_for_samples(avatar.samples_in)
    assert len(sink.audio) == len(first) + len(second)
    check_images(sink.images, pipe.size)


def test_pcm16_to_mono():
    pcm = np.array([[1000, 3000], [-32768, 32767], [0, 0]], "<i2")
    x = pcm16_to_mono(pcm.tobytes() + b"\x01", 2)  # a stray byte: dropped
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, pcm.astype(np.float32).mean(axis=1) / 32768)
    assert len(pcm16_to_mono(b"\x00\x01\x02", 1)) == 1


def test_missing_pipecat_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pipecat.frames.frames", None)
    monkeypatch.delitem(sys.modules, "readtalk.serve.pipecat")
    with pytest.raises(ImportError, match=r"pip install 'readtalk\[pipecat\]'"):
        importlib.import_module("readtalk.serve.pipecat")
