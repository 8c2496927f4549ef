"""The streaming session (readtalk.session), stated as a specification: speech pushed in pieces
of any size gives exactly the frames offline generation gives, one per 40 ms, each as soon as
its clip's audio has arrived; bad input is a one-line ReadtalkError."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from readtalk import GenerationSettings, Pipeline, ReadtalkError, Session
from readtalk.media import SAMPLES_PER_FRAME, frames_for_samples
from test_pipeline import CLIP, SIZE, _face, _speech, _write_models

F = SAMPLES_PER_FRAME

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return Pipeline.from_pretrained(_write_models(tmp_path_factory.mktemp("m") / "m"))


@pytest.fixture(scope="module")
def speech():
    return _speech(40 * SAMPLES_PER_FRAME + 100, seed=1)  # 41 frames: 3 clips of 17


@pytest.fixture(scope="module")
def offline(pipe, speech):
    return pipe(_face(), speech, seed=0, progress=False).frames


def _stream(pipe, speech, sizes, **kw) -> tuple[list[np.ndarray], list[int]]:
    """Push ``speech`` in pieces of ``sizes`` (cycled); the frames and how many each push gave."""
    s = pipe.stream(_face(), seed=0, **kw)
    frames, counts, i, k = [], [], 0, 0
    while i < len(speech):
        n = sizes[k % len(sizes)]
        got = s.push(speech[i : i + n])
        frames += got
        counts.append(len(got))
        i, k = i + n, k + 1
    frames += s.flush()
    return frames, counts


PIECES = ["one sample", "20 ms", "random", "whole"]


def piece_sizes(piece: str, total: int, seed: int = 3) -> list[int]:
    """The sizes of the pieces a test pushes (cycled)."""
    rng = np.random.default_rng(seed)
    return {
        "one sample": [1],
        "20 ms": [320],
        "random": list(rng.integers(1, 3000, 64)),
        "whole": [total],
    }[piece]


@pytest.mark.parametrize("piece", PIECES)
def test_streaming_equals_offline(pipe, speech, offline, piece):
    frames, _ = _stream(pipe, speech, piece_sizes(piece, len(speech)))
    assert len(frames) == frames_for_samples(len(speech)) == len(offline) == 41
    assert all(f.shape == (SIZE, SIZE, 3) and f.dtype == np.uint8 for f in frames)
    diff = np.abs(np.stack(frames).astype(int) - offline.astype(int)).max()
    assert diff <= 2  # the specification; the session is the offline algorithm: 0 in practice
    assert diff == 0


def test_frames_leave_as_soon_as_their_clip_has_its_audio(pipe, speech):
    s = pipe.stream(_face(), seed=0)
    assert s.push(speech[: CLIP * SAMPLES_PER_FRAME - 1]) == []  # one sample short of a clip
    first = s.push(speech[CLIP * SAMPLES_PER_FRAME - 1 : CLIP * SAMPLES_PER_FRAME])
    assert len(first) == CLIP and s.frames_out == CLIP and s.clips == 1
    # a later clip brings 8 (clip latents - motion latents) = 16 new frames
    new = (CLIP - 1) * SAMPLES_PER_FRAME
    assert len(s.push(speech[CLIP * SAMPLES_PER_FRAME : CLIP * SAMPLES_PER_FRAME + new])) == 16
    rest = s.push(speech[CLIP * SAMPLES_PER_FRAME + new :]) + s.flush()
    assert len(first) + 16 + len(rest) == 41 == s.frames_out


def test_settings_are_one_record(pipe, speech, offline):
    st = pipe.settings(seed=0)
    assert isinstance(st, GenerationSettings) and st.clip_frames == CLIP and st.steps == 2
    frames, _ = _stream(pipe, speech, [5000])
    via_record = pipe(_face(), speech, st, progress=False).frames
    assert np.array_equal(via_record, offline) and np.array_equal(np.stack(frames), offline)
    with pytest.raises(ReadtalkError, match="unknown generation setting"):
        pipe.stream(_face(), stepz=3)
    with pytest.raises(ReadtalkError, match="steps must be >= 1"):
        pipe.settings(steps=0)
    ablation = pipe(_face(), speech, seed=0, ans=False, progress=False).frames
    plain, _ = _stream(pipe, speech, [777], ans=False)
    assert np.array_equal(np.stack(plain), ablation)


def test_bad_input_is_one_line(pipe, speech):
    s = pipe.stream(_face(), seed=0)
    for bad, match in (
        (speech.astype(np.float64)[:10].astype(np.int16), "float"),
        (np.zeros((2, 100), np.float32), "mono"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.array([np.inf], np.float32), "NaN or infinite"),
    ):
        with pytest.raises(ReadtalkError, match=match) as e:
            s.push(bad)
        assert "\n" not in str(e.value)
    s.push(speech[:100])
    with pytest.raises(ReadtalkError, match="too short"):
        s.flush()  # 100 samples: not one frame
    with pytest.raises(ReadtalkError, match="flushed"):
        s.push(speech[:10])
    with pytest.raises(ReadtalkError, match="already flushed"):
        s.flush()


def test_memory_stays_flat(pipe):
    """A long session keeps only the audio of the clip in progress (not the whole speech)."""
    s = pipe.stream(_face(), seed=0, steps=1)
    clip_audio = CLIP * SAMPLES_PER_FRAME
    longest = 0
    for _ in range(12):
        s.push(np.zeros((CLIP - 1) * SAMPLES_PER_FRAME, np.float32))
        longest = max(longest, len(s._buffer) + sum(len(p) for p in s._pending))
    assert s.clips >= 11 and longest <= clip_audio
    s.flush()
    assert len(s._buffer) == 0 and s._tail is None and s._history is None


def test_push_is_thread_safe(pipe, speech, offline):
    """Pieces pushed from several threads, one after another, give the offline frames."""
    s = pipe.stream(_face(), seed=0)
    out: list[np.ndarray] = []
    pieces = [speech[i : i + 2000] for i in range(0, len(speech), 2000)]
    for piece in pieces:  # each push on its own thread, in order (as an executor would)
        t = threading.Thread(target=lambda p=piece: out.extend(s.push(p)))
        t.start()
        t.join()
    out += s.flush()
    assert np.array_equal(np.stack(out), offline)
    assert isinstance(s, Session)


def test_speech_features_are_computed_per_window_as_offline(pipe, speech):
    """The incremental front end: the session asks for the features of each clip's own audio
    window (left context: none beyond the window, as the cache computed them in training)."""
    calls: dict[str, list] = {"offline": [], "stream": []}
    fe = pipe.front_end

    class Recorder:
        name, dim = fe.name, fe.dim

        def __init__(self, key):
            self.key = key

        def video_features(self, audio, num_frames):
            calls[self.key].append(np.array(audio, copy=True))
            return fe.video_features(audio, num_frames)

    try:
        pipe.models.front_end = Recorder("offline")
        pipe(_face(), speech, seed=0, progress=False)
        pipe.models.front_end = Recorder("stream")
        _stream(pipe, speech, [321])
    finally:
        pipe.models.front_end = fe
    assert len(calls["offline"]) == len(calls["stream"]) == 3
    for a, b in zip(calls["offline"], calls["stream"], strict=True):
        assert np.array_equal(a, b)


def test_async_variants_give_the_same_frames(pipe, speech, offline):
    import asyncio

    async def run():
        s = pipe.stream(_face(), seed=0)
        out = []
        for i in range(0, len(speech), 4000):
            out += await s.apush(speech[i : i + 4000])
        return out + await s.aflush()

    assert np.array_equal(np.stack(asyncio.run(run())), offline)


def test_the_gate_silences_what_the_model_hears_in_pauses(pipe, speech):
    """``gate_db``: the front end hears the pauses as digital silence, the same whether the
    speech came whole or in pieces; without it, it hears the room noise."""
    noisy = speech.copy()
    noisy[17 * F : 33 * F] = 1e-3 * np.random.default_rng(5).standard_normal(16 * F)
    fe = pipe.front_end
    heard: list[np.ndarray] = []

    class Recorder:
        name, dim = fe.name, fe.dim

        def video_features(self, audio, num_frames):
            heard.append(np.array(audio, copy=True))
            return fe.video_features(audio, num_frames)

    runs = {}
    try:
        pipe.models.front_end = Recorder()
        for key, gate, sizes in (("off", 0.0, [len(noisy)]), ("whole", 30.0, [len(noisy)]),
                                 ("pieces", 30.0, [321])):  # fmt: skip
            heard.clear()
            frames, _ = _stream(pipe, noisy, sizes, gate_db=gate)
            runs[key] = (np.stack(frames), np.concatenate(heard), heard[1])
    finally:
        pipe.models.front_end = fe
    assert np.array_equal(runs["whole"][0], runs["pieces"][0])
    assert np.array_equal(runs["whole"][1], runs["pieces"][1])
    # the second clip hears frames 16-32: the pause from its frame 1, silent past the hold
    assert not runs["whole"][2][8 * F :].any() and runs["off"][2][8 * F :].any()
    assert np.array_equal(runs["whole"][2][: 7 * F], runs["off"][2][: 7 * F])  # hold: 6 frames
    with pytest.raises(ReadtalkError, match="gate range"):
        pipe.settings(gate_db=-3)
