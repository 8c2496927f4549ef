"""Speech augmentation for training on synthetic voices: make espeak-ng's speech sound like the
many ways real recordings differ from it, without moving a single phoneme in time.

Every SynthTalk clip speaks with espeak-ng, and the demo model follows real recorded speech much
less well (docs/results.md section 6). A lip-synced face must not depend on the voice, the room
or the microphone, so each transform here changes one of those and keeps the timing exactly
(the video frames stay aligned with the audio; nothing is sped up or slowed down):

* ``spectral_warp``: the magnitude spectrum stretched along frequency by a factor (0.85-1.2),
  which moves pitch harmonics and formants together: another vocal tract, another voice;
* ``equalise``: a random smooth gain curve over frequency (a few dB per octave band): another
  microphone or loudspeaker;
* ``reverberate``: a synthetic room (exponentially decaying noise tail of random RT60, early
  reflections), mixed with the dry signal;
* ``add_noise``: white, pink or brown noise at a random signal-to-noise ratio;
* ``telephone``: band-limited to 300-3,400 Hz and 8-bit mu-law quantised: a narrow-band codec;
* ``gain``: a level change, hard-clipped at full scale as a real overdriven input is.

``SpeechAugment`` draws a random chain of them per call from a seeded generator, so a cache
built with the same seed holds the same audio. Audio is float32 mono at 16 kHz in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from readtalk.errors import ReadtalkError

RATE = 16000
_NFFT, _HOP = 512, 128


def _stft(x: np.ndarray) -> np.ndarray:
    """(frames, bins) complex STFT with a periodic Hann window (hop a quarter of it)."""
    win = np.hanning(_NFFT + 1)[:-1].astype(np.float32)
    pad = np.pad(
        x, (_NFFT // 2, _NFFT // 2 + _HOP), mode="reflect" if len(x) > _NFFT else "constant"
    )
    n = 1 + (len(pad) - _NFFT) // _HOP
    idx = np.arange(_NFFT)[None, :] + _HOP * np.arange(n)[:, None]
    return np.fft.rfft(pad[idx] * win, axis=1)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    """Overlap-add inverse of ``_stft`` (window-power normalised), cut to ``length``."""
    win = np.hanning(_NFFT + 1)[:-1].astype(np.float32)
    frames = np.fft.irfft(spec, n=_NFFT, axis=1) * win
    total = _HOP * (len(frames) - 1) + _NFFT
    out, norm = np.zeros(total, np.float64), np.zeros(total, np.float64)
    for i, f in enumerate(frames):
        out[i * _HOP : i * _HOP + _NFFT] += f
        norm[i * _HOP : i * _HOP + _NFFT] += win**2
    out = out / np.maximum(norm, 1e-8)
    return out[_NFFT // 2 : _NFFT // 2 + length].astype(np.float32)


def spectral_warp(x: np.ndarray, factor: float) -> np.ndarray:
    """Stretch the spectrum along frequency by ``factor`` (> 1: higher voice) with a phase
    vocoder: output bin k takes the magnitude and the instantaneous frequency of input bin
    k / factor, the frequency scaled by ``factor`` and its phase advanced accordingly. The
    duration and every onset stay where they were."""
    spec = _stft(x)
    n_bins = spec.shape[1]
    bins = np.arange(n_bins, dtype=np.float64)
    mag, phase = np.abs(spec), np.angle(spec)
    expected = 2 * np.pi * _HOP * bins / _NFFT  # phase advance per hop of each bin's centre
    dphi = np.diff(phase, axis=0, prepend=phase[:1]) - expected
    dphi = (dphi + np.pi) % (2 * np.pi) - np.pi
    freq = bins + dphi * _NFFT / (2 * np.pi * _HOP)  # instantaneous frequency, in bins
    src = bins / factor
    near = np.minimum(np.round(src).astype(int), n_bins - 1)
    out_phase = phase[0, near]  # the first frame's phases keep each lobe's bins coherent
    out = np.empty_like(spec)
    for t in range(len(spec)):
        if t:
            f = factor * np.interp(src, bins, freq[t])
            out_phase = out_phase + 2 * np.pi * _HOP * f / _NFFT
        out[t] = np.interp(src, bins, mag[t], right=0.0) * np.exp(1j * out_phase)
    return _istft(out, len(x))


def equalise(x: np.ndarray, gains_db: np.ndarray) -> np.ndarray:
    """Filter by a smooth gain curve: ``gains_db`` at log-spaced frequencies from 60 Hz to
    8 kHz, interpolated over the log frequency."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    at = np.geomspace(60.0, RATE / 2, len(gains_db))
    db = np.interp(np.log(np.maximum(freqs, 1.0)), np.log(at), gains_db)
    return np.fft.irfft(spec * 10 ** (db / 20), n=len(x)).astype(np.float32)


def room_impulse(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room response: a unit direct path, a few early reflections (5-40 ms) and
    a decaying noise tail reaching -60 dB at ``rt60`` seconds."""
    n = max(int(rt60 * RATE), 16)
    t = np.arange(n) / RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    h = tail.astype(np.float64)
    h[0] = 1.0
    for _ in range(int(rng.integers(2, 6))):
        h[min(int(rng.uniform(0.005, 0.04) * RATE), n - 1)] += rng.uniform(0.2, 0.6)
    return (h / np.sqrt((h**2).sum())).astype(np.float32)


def reverberate(x: np.ndarray, rt60: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """Mix ``x`` convolved with ``room_impulse(rt60)`` (fraction ``wet``) with the dry signal;
    the response is causal, so no sound moves earlier."""
    h = room_impulse(rt60, rng)
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    dry_rms, wet_rms = np.sqrt((x**2).mean()) + 1e-9, np.sqrt((y**2).mean()) + 1e-9
    return ((1 - wet) * x + wet * y * dry_rms / wet_rms).astype(np.float32)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power falls as 1/f^0 (white), 1/f (pink) or 1/f^2 (brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0)
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[colour]
    y = np.fft.irfft(spec / f**exponent, n=n)
    return (y / (np.sqrt((y**2).mean()) + 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Noise at ``snr_db`` below the signal's RMS over its non-silent samples."""
    voiced = np.abs(x) > 1e-3
    rms = np.sqrt((x[voiced] ** 2).mean()) if voiced.any() else 1e-3
    return (x + coloured_noise(len(x), colour, rng) * rms * 10 ** (-snr_db / 20)).astype(np.float32)


def telephone(x: np.ndarray) -> np.ndarray:
    """Band-limited to 300-3,400 Hz and quantised to 8-bit mu-law (G.711's companding)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    spec[(f < 300) | (f > 3400)] = 0
    y = np.clip(np.fft.irfft(spec, n=len(x)), -1, 1)
    mu = 255.0
    c = np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)
    c = np.round((c + 1) * 127.5) / 127.5 - 1  # 256 levels
    return (np.sign(c) * ((1 + mu) ** np.abs(c) - 1) / mu).astype(np.float32)


def gain(x: np.ndarray, db: float) -> np.ndarray:
    return np.clip(x * 10 ** (db / 20), -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of ``SpeechAugment``'s transforms (each drawn independently)."""

    warp: float = 0.6  # probability of a spectral warp
    warp_range: tuple[float, float] = (0.85, 1.2)
    eq: float = 0.6
    eq_db: float = 8.0  # the gain curve's points are uniform in +-eq_db
    reverb: float = 0.4
    rt60_range: tuple[float, float] = (0.15, 0.8)
    noise: float = 0.5
    snr_range: tuple[float, float] = (8.0, 35.0)
    telephone: float = 0.15
    gain_range: tuple[float, float] = (-18.0, 8.0)  # always applied

    def validate(self) -> None:
        for name in ("warp", "eq", "reverb", "noise", "telephone"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ReadtalkError(f"augment {name} is a probability, got {getattr(self, name)}")
        for name in ("warp_range", "rt60_range", "snr_range", "gain_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ReadtalkError(f"augment {name} must be (low, high), got {(lo, hi)}")
        if self.warp_range[0] <= 0 or self.rt60_range[0] <= 0:
            raise ReadtalkError("augment warp factors and RT60s must be positive")


class SpeechAugment:
    """A random, timing-preserving chain of the transforms above:
    ``SpeechAugment()(audio, rng) -> (augmented audio, what was done)``."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        self.config.validate()

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        c = self.config
        x = np.asarray(audio, np.float32)
        if x.ndim != 1 or not len(x):
            raise ReadtalkError(f"speech augmentation needs mono audio samples, got {x.shape}")
        done: dict = {}
        if rng.uniform() < c.warp:
            done["warp"] = float(rng.uniform(*c.warp_range))
            x = spectral_warp(x, done["warp"])
        if rng.uniform() < c.eq:
            gains = rng.uniform(-c.eq_db, c.eq_db, 6)
            done["eq_db"] = [round(float(g), 2) for g in gains]
            x = equalise(x, gains)
        if rng.uniform() < c.reverb:
            done["rt60"] = float(rng.uniform(*c.rt60_range))
            x = reverberate(x, done["rt60"], float(rng.uniform(0.2, 0.7)), rng)
        if rng.uniform() < c.noise:
            done["snr_db"] = float(rng.uniform(*c.snr_range))
            done["noise"] = str(rng.choice(["white", "pink", "brown"]))
            x = add_noise(x, done["snr_db"], done["noise"], rng)
        if rng.uniform() < c.telephone:
            done["telephone"] = True
            x = telephone(x)
        done["gain_db"] = float(rng.uniform(*c.gain_range))
        x = gain(x, done["gain_db"])
        return x, done
