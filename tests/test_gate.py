"""The noise gate on the speech the model hears (readtalk.speech.gate): a recording's pauses are
silenced, its speech passes untouched, causally and the same however the speech is split."""

from __future__ import annotations

import numpy as np
import pytest

from readtalk import ReadtalkError
from readtalk.media import SAMPLES_PER_FRAME
from readtalk.speech.gate import GateConfig, NoiseGate, frame_levels

F = SAMPLES_PER_FRAME


def _talk(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like bursts (a 3-Hz syllable rhythm at -12 dBFS) with a 1.2-s pause of room noise
    at -70 dBFS and a 0.12-s gap inside a word; and which frames are the long pause."""
    t = np.arange(100 * F) / 16000
    x = 0.35 * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * 180 * t)
    pause = np.zeros(100, bool)
    pause[40:70] = True  # frames 40-69: 1.2 s
    x[40 * F : 70 * F] = 10 ** (-70 / 20) * rng.standard_normal(30 * F)
    x[20 * F : 23 * F] = 10 ** (-70 / 20) * rng.standard_normal(3 * F)  # a short gap
    return x.astype(np.float32), pause


def _gate(x: np.ndarray, sizes: list[int], config: GateConfig | None = None) -> np.ndarray:
    g, out, i, k = NoiseGate(config), [], 0, 0
    while i < len(x):
        out.append(g.process(x[i : i + sizes[k % len(sizes)]]))
        i, k = i + sizes[k % len(sizes)], k + 1
    return np.concatenate([*out, g.flush()])


def test_pauses_are_silenced_and_speech_passes():
    x, pause = _talk(np.random.default_rng(0))
    y = _gate(x, [len(x)])
    assert y.shape == x.shape and y.dtype == np.float32
    hold = round(GateConfig().hold_s * 25)
    # the long pause: open for the hold, one frame fading out, then digital silence
    assert np.array_equal(y[: 40 * F], x[: 40 * F])  # speech and the short gap as recorded
    assert np.array_equal(y[40 * F : (40 + hold) * F], x[40 * F : (40 + hold) * F])
    fade = y[(40 + hold) * F : (41 + hold) * F] / x[(40 + hold) * F : (41 + hold) * F]
    assert fade[0] == pytest.approx(1) and fade[-1] == pytest.approx(0, abs=1e-6)
    assert not y[(41 + hold) * F : 70 * F].any()
    assert np.array_equal(y[70 * F :], x[70 * F :])  # the onset after it passes whole
    assert (frame_levels(y)[pause] < -99).mean() > 0.7


def test_the_same_however_the_speech_is_split():
    x, _ = _talk(np.random.default_rng(1))
    whole = _gate(x, [len(x)])
    for sizes in ([1], [333], list(np.random.default_rng(2).integers(1, 3000, 50))):
        assert np.array_equal(_gate(x, sizes), whole)
    odd = x[: 50 * F + 123]  # an incomplete last frame is gated with the rest
    assert np.array_equal(_gate(odd, [700]), _gate(odd, [len(odd)]))
    assert len(_gate(odd, [700])) == len(odd)


def test_level_does_not_matter_and_silence_stays_silence():
    x, _ = _talk(np.random.default_rng(3))
    quiet = (x * 10 ** (-20 / 20)).astype(np.float32)  # the same talk 20 dB quieter
    assert np.array_equal(_gate(quiet, [len(x)]) != 0, _gate(x, [len(x)]) != 0)
    assert not _gate(np.zeros(30 * F, np.float32), [1000]).any()


def test_no_gate_and_bad_settings():
    x, _ = _talk(np.random.default_rng(4))
    assert np.array_equal(_gate(x, [517], GateConfig(range_db=0)), x)
    with pytest.raises(ReadtalkError, match="must be >= 0"):
        GateConfig(range_db=-1)
