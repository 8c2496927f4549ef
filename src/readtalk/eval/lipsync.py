"""Metrics on frame sequences that need no network: exact lip sync against SynthTalk's ground
truth, seams at clip boundaries, and a SynthTalk identity score. One function per metric.

- ``mouth_sync``: the mouth reader's lip gap on generated frames against the true gap of the
  clip's track: Pearson correlation, mean absolute error (fractions of the frame height) and
  the audio-visual offset (frames) that maximises the correlation. A positive offset means the
  video lags the audio.
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


@dataclass(frozen=True)
class MouthSync:
    corr: float  # Pearson correlation at zero offset
    mae: float  # mean |gap_pred - gap_true|, fraction of the frame height
    offset: int  # frames; > 0: the video lags the audio
    best_corr: float  # the correlation at that offset


def mouth_sync(pred_gap: np.ndarray, true_gap: np.ndarray, max_offset: int = 5) -> MouthSync:
    """Compare per-frame lip gaps (equal length; the caller trims to the shorter)."""
    p, t = np.asarray(pred_gap, np.float64), np.asarray(true_gap, np.float64)
    n = min(p.size, t.size)
    p, t = p[:n], t[:n]
    best, best_k = float("nan"), 0
    for k in range(-max_offset, max_offset + 1):
        # video lags by k: pred[i + k] shows true[i]
        a, b = (p[k:], t[: n - k]) if k >= 0 else (p[: n + k], t[-k:])
        c = pearson(a, b)
        if not math.isnan(c) and (math.isnan(best) or c > best):
            best, best_k = c, k
    return MouthSync(
        pearson(p, t), float(np.abs(p - t).mean()) if n else float("nan"), best_k, best
    )


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
