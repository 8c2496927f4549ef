"""Metrics on frame sequences that need no network: exact lip sync against SynthTalk's ground
truth, seams at clip boundaries, and a SynthTalk identity score. One function per metric.

- ``mouth_sync``: the mouth reader's lip gap on generated frames against the true gap of the
  clip's track: Pearson correlation, mean absolute error (fractions of the frame height) and
  the audio-visual offset (frames) that maximises the correlation. A positive offset means the
  video lags the audio.
- ``mouth_energy``: a measure that needs no true track, so it applies to any speech (a real
  recording included): does the mouth open while there is speech (``open_fraction``), and does
  its opening follow the speech energy (``energy_corr``)? Definitions in its docstring and in
  docs/eval.md.
- ``frame_changes`` / ``seam_ratio``: READ's ANS exists to remove the jump at clip boundaries;
  the per-frame change (mean absolute difference between consecutive frames) at the first
  frame of every new clip, divided by the median change inside clips, is 1 for a seamless
  video and grows with the jump.
- ``thumbnail_identity``: for SynthTalk faces (no face-recognition network knows them),
  identity is the drawn person's colours, hair, face shape, clothes and background; the SSIM of
  a 64x64 thumbnail of each frame against the reference portrait measures exactly that while
  ignoring what is meant to change (mouth, eyes, small head motion): justified in docs/eval.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from readtalk.data.synthtalk.identity import luma
from readtalk.data.synthtalk.mouth_reader import SEARCH, pearson
from readtalk.eval.pixel import ssim
from readtalk.media import SAMPLES_PER_FRAME
from readtalk.speech.gate import SILENT_DB, frame_levels

# mouth_energy's defaults (docs/eval.md has why)
VOICED_DB = 30.0  # a frame is voiced within this many dB of the recording's loud frames
LOUD_PERCENTILE = 95.0  # "the loud frames": this percentile of the per-frame energies
OPEN_GAP = 0.02  # a mouth is open when its lip gap exceeds this fraction of the frame height
SILENCE_DB = SILENT_DB  # the energy of a frame of digital silence (RMS floor 1e-5)


@dataclass(frozen=True)
class MouthSync:
    corr: float  # Pearson correlation at zero offset
    mae: float  # mean |gap_pred - gap_true|, fraction of the frame height
    offset: int  # frames; > 0: the video lags the audio
    best_corr: float  # the correlation at that offset


def lagged_pearson(video: np.ndarray, audio: np.ndarray, max_lag: int) -> tuple[float, int]:
    """(best correlation, its lag) of two equal-length per-frame signals over lags
    -max_lag..max_lag; lag k pairs ``video[i + k]`` with ``audio[i]`` (k > 0: the video lags).
    NaN and lag 0 when no lag gives a defined correlation; ties keep the most negative lag."""
    n = min(video.size, audio.size)
    best, best_k = float("nan"), 0
    for k in range(-max_lag, max_lag + 1):
        a, b = (video[k:n], audio[: n - k]) if k >= 0 else (video[: n + k], audio[-k:n])
        c = pearson(a, b)
        if not math.isnan(c) and (math.isnan(best) or c > best):
            best, best_k = c, k
    return best, best_k


def mouth_sync(pred_gap: np.ndarray, true_gap: np.ndarray, max_offset: int = 5) -> MouthSync:
    """Compare per-frame lip gaps (equal length; the caller trims to the shorter)."""
    p, t = np.asarray(pred_gap, np.float64), np.asarray(true_gap, np.float64)
    n = min(p.size, t.size)
    p, t = p[:n], t[:n]
    best, best_k = lagged_pearson(p, t, max_offset)  # video lags by k: pred[i + k] shows true[i]
    return MouthSync(
        pearson(p, t), float(np.abs(p - t).mean()) if n else float("nan"), best_k, best
    )


@dataclass(frozen=True)
class MouthEnergy:
    energy: np.ndarray  # (F,) dB: RMS of each frame's 640 samples (full scale 1.0 = 0 dB)
    voiced: np.ndarray  # (F,) bool: energy >= threshold_db
    threshold_db: float  # the voiced threshold: loud frames' level - VOICED_DB
    open_fraction: float  # fraction of voiced frames with gap > open_gap (NaN: none voiced)
    open_unvoiced: float  # the same over the other frames (NaN: none)
    energy_corr: float  # Pearson r of gap and clipped energy at the best lag
    lag: int  # that lag in frames; > 0: the mouth follows the speech late
    corr_at_zero: float  # r at lag 0
    reason: str = ""  # why a value is NaN ("" when all are defined)


def frame_energy(audio: np.ndarray, frames: int) -> np.ndarray:
    """(frames,) RMS level in dB of each video frame's ``SAMPLES_PER_FRAME`` samples (16 kHz,
    25 fps: 40 ms); audio past the last frame is ignored, missing audio counts as silence."""
    x = np.zeros(frames * SAMPLES_PER_FRAME, np.float64)
    a = np.asarray(audio, np.float64).reshape(-1)[: x.size]
    x[: a.size] = a
    return frame_levels(x)  # the noise gate's measure of the same frames


def mouth_energy(
    gap: np.ndarray,
    audio: np.ndarray,
    max_lag: int = 3,
    voiced_db: float = VOICED_DB,
    open_gap: float = OPEN_GAP,
) -> MouthEnergy:
    """How a video's mouth follows its speech, without a true mouth track.

    ``gap``: (F,) lip gap per frame as a fraction of the frame height (``read_mouth(f).gap``,
    or SynthTalk's true gap); ``audio``: the video's 16 kHz speech, frame i being samples
    ``640 i .. 640 (i + 1)``.

    - energy: ``frame_energy``, the RMS of each 40-ms frame in dB.
    - voiced: frames within ``voiced_db`` dB of the recording's loud frames (the
      ``LOUD_PERCENTILE``-th percentile of its frame energies): relative, so that the
      recording's level does not matter; 30 dB keeps the quieter speech sounds and leaves out
      pauses, where a recording's room noise sits lower still (pyannote's sample.wav: loud
      frames -27 dBFS, its quietest 5 % below -71).
    - ``open_fraction``: the fraction of voiced frames whose gap exceeds ``open_gap`` (absolute:
      0.02 of the frame height, about a quarter of a wide-open SynthTalk mouth; a threshold
      relative to the video's own range would call a mouth that barely parts "open" and hide
      exactly the failure this measures). A talking mouth is not open on every voiced frame
      (m, b, p, closures between syllables), so truth is well below 1.
    - ``energy_corr``: Pearson r of the gap and the energy clipped from below at the voiced
      threshold (every pause at one level: espeak-ng's digital silence and a recording's room
      noise weigh alike) over all frames, at the best lag within +-``max_lag`` frames
      (``lag``; > 0: the mouth moves after the sound).
    """
    g = np.asarray(gap, np.float64).reshape(-1)
    if max_lag < 0 or voiced_db <= 0:
        raise ValueError("max_lag must be >= 0 and voiced_db > 0")
    energy = frame_energy(audio, g.size)
    reasons = []
    if g.size == 0 or energy.max() <= SILENCE_DB:
        threshold = float("inf")
        reasons.append("no speech: the audio is silent")
    else:
        threshold = float(np.percentile(energy, LOUD_PERCENTILE)) - voiced_db
    voiced = energy >= threshold
    is_open = g > open_gap
    open_fraction = float(is_open[voiced].mean()) if voiced.any() else float("nan")
    open_unvoiced = float(is_open[~voiced].mean()) if (~voiced).any() else float("nan")
    clipped = np.maximum(energy, threshold) if math.isfinite(threshold) else energy
    corr, lag = lagged_pearson(g, clipped, max_lag)
    if math.isnan(corr):
        if g.size > 1 and np.ptp(g) == 0:
            reasons.append("the mouth never moves (constant gap)")
        elif not reasons:
            reasons.append("the speech energy is constant")
    return MouthEnergy(
        energy, voiced, threshold, open_fraction, open_unvoiced, corr, lag,
        pearson(g, clipped), "; ".join(reasons),
    )  # fmt: skip


def locate_mouth(frames: np.ndarray) -> tuple[int, int]:
    """(x, y) pixel where a mouth-sized patch of the lower face changes most over the video.

    For blurry generations the mouth reader (which needs a sharp interior colour) sees
    nothing, yet a mouth that opens and closes still darkens and lightens one spot; this finds
    that spot: the peak of the per-pixel temporal standard deviation of luma, averaged over a
    box of about a mouth's size, inside ``SEARCH``."""
    _, H, W, _ = frames.shape
    x0, x1, y0, y1 = (
        int(SEARCH[0] * W),
        int(SEARCH[1] * W),
        int(SEARCH[2] * H),
        int(SEARCH[3] * H),
    )
    std = luma(frames[:, y0:y1, x0:x1]).std(axis=0)
    k = max(3, (W // 10) | 1)
    std = cv2.blur(std, (k, max(3, (k // 2) | 1)))
    iy, ix = np.unravel_index(int(np.argmax(std)), std.shape)
    return int(ix + x0), int(iy + y0)


def mouth_darkness(frames: np.ndarray, center: tuple[int, int]) -> np.ndarray:
    """(F,) mean darkness (1 - luma / 255) of a mouth-sized window around ``center``: a
    blur-tolerant openness signal (compare it with the true gap by correlation)."""
    _, H, W, _ = frames.shape
    hw, hh = max(1, int(0.07 * W)), max(1, int(0.035 * H))
    x, y = center
    win = frames[:, max(0, y - hh) : y + hh + 1, max(0, x - hw) : x + hw + 1]
    return 1.0 - luma(win).mean(axis=(1, 2)) / 255.0


def frame_changes(frames: np.ndarray, size: int = 64) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F - 1,) mean absolute difference of consecutive frames (0..255),
    on ``size``-pixel grey thumbnails so that codec noise hardly counts."""
    g = np.stack(
        [
            cv2.resize(
                cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (size, size), interpolation=cv2.INTER_AREA
            )
            for f in frames
        ]
    ).astype(np.float32)
    return np.abs(np.diff(g, axis=0)).mean(axis=(1, 2))


def seam_ratio(changes: np.ndarray, boundaries: list[int]) -> float:
    """Mean change into each boundary frame / median change elsewhere (NaN without boundaries).

    ``changes[i]`` is the change from frame i to frame i + 1; a boundary b (the first frame of a
    new clip) is entered by ``changes[b - 1]``."""
    idx = [b - 1 for b in boundaries if 1 <= b <= changes.size]
    if not idx:
        return float("nan")
    inside = np.delete(changes, idx)
    base = float(np.median(inside)) if inside.size else float("nan")
    return float(changes[idx].mean() / max(base, 1e-3))


def thumbnail(frame: np.ndarray, size: int = 64) -> torch.Tensor:
    """uint8 (H, W, 3) -> (3, size, size) float in [0, 1]."""
    t = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(t).permute(2, 0, 1).float().div(255)


def thumbnail_identity(frames: np.ndarray, portrait: np.ndarray, size: int = 64) -> np.ndarray:
    """Per-frame SSIM of ``size``-pixel thumbnails against the reference portrait."""
    ref = thumbnail(portrait, size)[None]
    return np.array([ssim(thumbnail(f, size)[None], ref) for f in frames], np.float32)
