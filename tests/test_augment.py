"""Speech augmentation (data.augment): each transform changes the voice, room or microphone and
keeps every sound where it was in time."""

import numpy as np
import pytest

from readtalk.data.augment import (
    RATE,
    AugmentConfig,
    SpeechAugment,
    add_noise,
    equalise,
    reverberate,
    spectral_warp,
    telephone,
)
from readtalk.errors import ReadtalkError


def _burst(f0=200.0, start=0.5, stop=0.8, seconds=1.2):
    """A voiced burst (f0 and its harmonics) between ``start`` and ``stop``, silence around."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    x = x * ((t >= start) & (t < stop))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _onset(x, thresh=0.1):
    """The first 10-ms frame whose RMS reaches ``thresh`` of the loudest frame's, in seconds."""
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames**2).mean(1))
    return np.argmax(rms >= thresh * rms.max()) * 0.01


def _peak_hz(x):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / RATE)[np.argmax(spec)]


def test_every_transform_keeps_length_and_onsets():
    x = _burst()
    rng = np.random.default_rng(0)
    outs = {
        "warp": spectral_warp(x, 1.2),
        "eq": equalise(x, np.array([6.0, -6.0, 3.0, -3.0, 6.0, 0.0])),
        "reverb": reverberate(x, 0.6, 0.6, rng),
        "telephone": telephone(x),
    }
    for name, y in outs.items():
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all(), name
        assert abs(_onset(y) - _onset(x)) <= 0.02, name  # no sound moves in time
    assert _onset(x) == pytest.approx(0.5, abs=0.011)


def test_spectral_warp_moves_the_voice_up_and_down():
    t = np.arange(RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    assert _peak_hz(spectral_warp(tone, 1.2)) == pytest.approx(600, abs=20)
    assert _peak_hz(spectral_warp(tone, 0.85)) == pytest.approx(425, abs=20)
    assert np.allclose(spectral_warp(tone, 1.0)[600:-600], tone[600:-600], atol=1e-3)


def test_flat_eq_is_the_identity_and_telephone_cuts_the_band():
    x = _burst()
    assert np.allclose(equalise(x, np.zeros(6)), x, atol=1e-6)
    t = np.arange(RATE) / RATE
    low, high, mid = (np.sin(2 * np.pi * f * t).astype(np.float32) * 0.3 for f in (100, 5000, 1000))
    rms = lambda v: np.sqrt((v**2).mean())  # noqa: E731
    assert rms(telephone(low)) < 0.01 and rms(telephone(high)) < 0.01
    assert rms(telephone(mid)) == pytest.approx(rms(mid), rel=0.05)


def test_noise_lands_at_the_asked_snr():
    x = _burst(start=0.0, stop=1.2)
    for colour in ("white", "pink", "brown"):
        y = add_noise(x, 20.0, colour, np.random.default_rng(1))
        snr = 10 * np.log10((x**2).mean() / ((y - x) ** 2).mean())
        assert snr == pytest.approx(20.0, abs=0.5), colour


def test_speech_augment_is_seeded_and_bounded():
    x = _burst()
    aug = SpeechAugment()
    a, what_a = aug(x, np.random.default_rng(7))
    b, what_b = aug(x, np.random.default_rng(7))
    assert np.array_equal(a, b) and what_a == what_b and "gain_db" in what_a
    assert np.abs(a).max() <= 1.0 and a.shape == x.shape
    seen = set()
    for seed in range(40):
        seen |= set(aug(x, np.random.default_rng(seed))[1])
    assert {"warp", "eq_db", "rt60", "snr_db", "noise", "telephone", "gain_db"} <= seen
    with pytest.raises(ReadtalkError, match="probability"):
        SpeechAugment(AugmentConfig(noise=1.5))
    with pytest.raises(ReadtalkError, match="mono"):
        aug(np.zeros((2, 100), np.float32), np.random.default_rng(0))
