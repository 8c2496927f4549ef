"""Phonemes -> visemes -> per-frame mouth parameters, with co-articulation.

Each espeak phoneme maps to a viseme: a target for three mouth parameters in [0, 1]
(openness, width, rounding) and a dominance per parameter. Trajectories follow the dominance
model of Cohen & Massaro (1993, "Modeling coarticulation in synthetic visual speech"): every
segment exerts an influence that is flat inside it and decays exponentially outside it, faster
after the segment (carry-over) than before it (anticipation); a parameter at time t is the
dominance-weighted mean of all targets. So a /p/ closes the lips firmly and early (high
dominance), while a /t/ takes its openness from the vowels around it (low dominance), and lips
round ahead of a rounded vowel. A short Gaussian low-pass stands in for muscle inertia, and each
video frame averages the trajectory over its 40 ms (as a camera shutter does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PARAMS = ("open", "width", "round")


@dataclass(frozen=True)
class Viseme:
    open: float
    width: float
    round: float
    dominance: tuple[float, float, float]  # per parameter (open, width, round)


def _v(o: float, w: float, r: float, d: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Viseme:
    return Viseme(o, w, r, d)


REST = _v(0.0, 0.5, 0.05, (0.6, 0.3, 0.3))
# Consonants. Lip closure and labiodental contact dominate openness; tongue consonants barely
# constrain the lips, so their dominance is low and they inherit the shape of nearby vowels.
_CONSONANTS: dict[str, Viseme] = {
    **dict.fromkeys(("p", "b", "m"), _v(0.0, 0.45, 0.1, (3.0, 1.0, 0.6))),
    **dict.fromkeys(("f", "v"), _v(0.06, 0.5, 0.0, (2.5, 1.0, 0.6))),
    **dict.fromkeys(("T", "D"), _v(0.2, 0.55, 0.05, (1.2, 0.6, 0.4))),
    **dict.fromkeys(
        ("t", "d", "n", "l", "s", "z", "t2", "d2", "n-", "l/", "?"),
        _v(0.17, 0.58, 0.05, (0.8, 0.5, 0.3)),
    ),
    **dict.fromkeys(("S", "Z", "tS", "dZ"), _v(0.2, 0.3, 0.65, (1.2, 1.5, 2.0))),
    **dict.fromkeys(("k", "g", "N", "x"), _v(0.3, 0.5, 0.1, (0.5, 0.4, 0.3))),
    "h": _v(0.35, 0.5, 0.1, (0.3, 0.3, 0.3)),
    "r": _v(0.25, 0.35, 0.5, (1.0, 1.2, 1.5)),
    "w": _v(0.1, 0.1, 0.95, (2.0, 2.0, 3.0)),
    **dict.fromkeys(("j", ";"), _v(0.15, 0.75, 0.0, (1.0, 1.5, 1.0))),
}
# Vowels (first target of a diphthong, second target after the ':').
_VOWELS: dict[str, Viseme] = {
    "a": _v(0.85, 0.62, 0.05),
    "aa": _v(0.85, 0.62, 0.05),
    "a#": _v(0.7, 0.6, 0.05),
    "A:": _v(0.95, 0.5, 0.12),
    "A@": _v(0.9, 0.5, 0.15),
    "A": _v(0.9, 0.5, 0.12),
    "@": _v(0.4, 0.5, 0.1),
    "@-": _v(0.35, 0.5, 0.1),
    "@L": _v(0.35, 0.55, 0.05),
    "@r": _v(0.35, 0.4, 0.4),
    "3:": _v(0.4, 0.42, 0.35),
    "3": _v(0.4, 0.42, 0.35),
    "E": _v(0.6, 0.72, 0.05),
    "e": _v(0.55, 0.72, 0.05),
    "e@": _v(0.6, 0.65, 0.05),
    "i": _v(0.3, 0.9, 0.0),
    "i:": _v(0.28, 0.95, 0.0),
    "i@": _v(0.3, 0.85, 0.0),
    "I": _v(0.35, 0.8, 0.0),
    "I#": _v(0.33, 0.75, 0.0),
    "I2": _v(0.33, 0.75, 0.0),
    "O:": _v(0.7, 0.3, 0.7),
    "O": _v(0.7, 0.3, 0.7),
    "O@": _v(0.7, 0.32, 0.65),
    "o@": _v(0.65, 0.32, 0.7),
    "0": _v(0.75, 0.4, 0.45),
    "U": _v(0.35, 0.3, 0.7),
    "U@": _v(0.4, 0.32, 0.65),
    "u:": _v(0.25, 0.1, 1.0),
    "u": _v(0.25, 0.12, 0.95),
    "V": _v(0.65, 0.55, 0.1),
}
_DIPHTHONGS: dict[str, tuple[str, str]] = {
    "aI": ("a", "I"),
    "aI@": ("a", "@"),
    "aU": ("a", "U"),
    "aU@": ("a", "@"),
    "eI": ("e", "I"),
    "oU": ("O", "U"),
    "oU#": ("O", "U"),
    "OI": ("O:", "I"),
}
_PAUSE_PREFIX = "_"


def viseme_targets(symbol: str) -> list[Viseme]:
    """Viseme targets of one espeak phoneme mnemonic (two for a diphthong).

    Stress marks (', ,) must already be stripped. Pauses map to the closed rest mouth. An
    unknown mnemonic is matched by its longest known prefix; failing that, it is treated as a
    weak neutral consonant (so new espeak data never crashes the renderer).
    """
    if not symbol or symbol.startswith(_PAUSE_PREFIX):
        return [REST]
    if symbol in _DIPHTHONGS:
        a, b = _DIPHTHONGS[symbol]
        return [_VOWELS[a], _VOWELS[b]]
    for table in (_VOWELS, _CONSONANTS):
        if symbol in table:
            return [table[symbol]]
    for n in range(len(symbol) - 1, 0, -1):
        head = symbol[:n]
        if head in _DIPHTHONGS:
            return viseme_targets(head)
        if head in _VOWELS:
            return [_VOWELS[head]]
        if head in _CONSONANTS:
            return [_CONSONANTS[head]]
    return [_v(0.25, 0.5, 0.1, (0.4, 0.3, 0.3))]


@dataclass(frozen=True)
class Coarticulation:
    anticipation: float = 0.03  # s, decay constant of influence before a segment
    carryover: float = 0.025  # s, decay constant after a segment
    inertia: float = 0.012  # s, sigma of the final Gaussian low-pass
    stress_gain: float = 1.12  # stressed vowels open wider
    rate: int = 400  # Hz, internal sampling rate of the trajectory


def mouth_trajectory(
    segments: Sequence[tuple[str, float, float, bool]],
    duration: float,
    fps: int = 25,
    gain: float = 1.0,
    co: Coarticulation | None = None,
) -> np.ndarray:
    """Per-frame mouth parameters (F, 3) = (open, width, round) for ``duration`` seconds.

    ``segments`` are (symbol, start, end, stressed) in seconds; time outside all segments is
    rest. ``gain`` scales openness (how wide a speaker opens the mouth). Frame i covers
    [i/fps, (i+1)/fps) and gets the mean of the trajectory over that interval.
    """
    co = co or Coarticulation()
    n_frames = int(round(duration * fps))
    sub = co.rate // fps  # samples per frame
    t = (np.arange(n_frames * sub) + 0.5) / (n_frames * sub) * (n_frames / fps)
    # Rest everywhere with a small constant dominance, so silence closes the mouth.
    num = np.zeros((3, t.size))
    den = np.full((3, t.size), 1e-3)
    rest = np.array([REST.open, REST.width, REST.round])[:, None]
    num += 1e-3 * rest
    pieces: list[tuple[Viseme, float, float, bool]] = []
    for sym, start, end, stressed in segments:
        targets = viseme_targets(sym)
        step = (end - start) / len(targets)
        for k, vis in enumerate(targets):
            pieces.append((vis, start + k * step, start + (k + 1) * step, stressed))
    for vis, start, end, stressed in pieces:
        lo = np.searchsorted(t, start - 8 * co.anticipation)
        hi = np.searchsorted(t, end + 8 * co.carryover)
        if hi <= lo:
            continue
        tt = t[lo:hi]
        before = np.clip(start - tt, 0.0, None) / co.anticipation
        after = np.clip(tt - end, 0.0, None) / co.carryover
        shape = np.exp(-(before + after))  # 1 inside the segment
        o = vis.open * (co.stress_gain if stressed and vis.open > 0.3 else 1.0)
        target = np.array([o, vis.width, vis.round])[:, None]
        dom = np.array(vis.dominance)[:, None] * shape[None]
        num[:, lo:hi] += dom * target
        den[:, lo:hi] += dom
    traj = num / den
    sigma = co.inertia * co.rate
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(traj, ((0, 0), (radius, radius)), mode="edge")
    traj = np.stack([np.convolve(row, kernel, mode="valid") for row in padded])
    frames = traj.reshape(3, n_frames, sub).mean(axis=2).T
    frames[:, 0] *= gain
    return np.clip(frames, 0.0, 1.0).astype(np.float32)
