"""Faces in real footage: detection, tracking between detections, and a smooth square crop.

The detector is dlib's HOG + linear SVM frontal face detector (Dalal & Triggs 2005, as trained
by dlib), which is compiled into the ``dlib-bin`` wheel: no model file, no download, Boost
Software License. ``docs/prepare.md`` says why it was chosen over the alternatives.

The footage is first resampled to 25 fps; the detector runs every few frames (and on the first
frame after a scene cut), and boxes in between are linearly interpolated along a *track*: a run
of detections of the same face (consecutive boxes overlap) with no scene cut and no long gap.
Each track's boxes are then smoothed with a Gaussian over time, so the crop glides instead of
jittering with the detector's pixel (and pyramid-scale) noise; the crop is a square
``margin`` times the face box, clamped inside the frame and sampled with sub-pixel accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Boxes are (cx, cy, side) in source pixels; the HOG detector's boxes are square.


@dataclass(frozen=True)
class Face:
    cx: float
    cy: float
    size: float  # side of the (square) face box, eyebrows to chin
    score: float  # SVM margin; 0 is dlib's default threshold, frontal faces score ~0.5-2

    @property
    def box(self) -> np.ndarray:
        return np.array([self.cx, self.cy, self.size])


class FaceDetector:
    """dlib's HOG frontal face detector on a copy of the frame whose short side is ``work_size``.

    The HOG window is 80 px, so at ``work_size=480`` the smallest face found is 1/6 of the
    frame's short side; small inputs are upscaled to ``work_size`` (which is what dlib's own
    ``upsample`` argument does). Returns faces in source pixels, largest first.
    """

    def __init__(self, work_size: int = 480, threshold: float = 0.0) -> None:
        import dlib

        self._hog = dlib.get_frontal_face_detector()
        self.work_size = work_size
        self.threshold = threshold

    def __call__(self, frame: np.ndarray) -> list[Face]:
        h, w = frame.shape[:2]
        s = self.work_size / min(h, w)
        if abs(s - 1) > 1e-3:
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            frame = cv2.resize(frame, (round(w * s), round(h * s)), interpolation=interp)
        rects, scores, _ = self._hog.run(np.ascontiguousarray(frame), 0, self.threshold)
        faces = [
            Face(
                (r.left() + r.right() + 1) / 2 / s,
                (r.top() + r.bottom() + 1) / 2 / s,
                r.width() / s,
                float(sc),
            )
            for r, sc in zip(rects, scores, strict=True)
        ]
        return sorted(faces, key=lambda f: -f.size)

    def near(self, frame: np.ndarray, face: Face, context: float = 3.0) -> list[Face]:
        """Faces in a square ``context`` times ``face`` around it, searched at a scale where
        ``face`` is 110 px (the HOG window is 80 px, so the face may shrink by a quarter):
        about a third of the cost of a full-frame search on 720p footage."""
        h, w = frame.shape[:2]
        half = context * face.size / 2
        x0, x1 = max(0, int(face.cx - half)), min(w, int(math.ceil(face.cx + half)))
        y0, y1 = max(0, int(face.cy - half)), min(h, int(math.ceil(face.cy + half)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return []
        s = 110 / face.size
        roi = frame[y0:y1, x0:x1]
        nw, nh = max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        roi = np.ascontiguousarray(cv2.resize(roi, (nw, nh), interpolation=interp))
        sx, sy = nw / (x1 - x0), nh / (y1 - y0)
        rects, scores, _ = self._hog.run(roi, 0, self.threshold)
        faces = [
            Face(
                x0 + (r.left() + r.right() + 1) / 2 / sx,
                y0 + (r.top() + r.bottom() + 1) / 2 / sy,
                r.width() / sx,
                float(sc),
            )
            for r, sc in zip(rects, scores, strict=True)
        ]
        return sorted(faces, key=lambda f: -f.size)


# ------------------------------------------------------------------------------ scene cuts


def cut_signature(grey: np.ndarray) -> np.ndarray:
    """A 32x32 thumbnail (float32 in [0, 1]) of a grey (H, W) or RGB (H, W, 3) frame."""
    if grey.ndim == 3:
        grey = cv2.cvtColor(grey, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def cut_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails: ~0.01-0.04 for a talking head from one frame
    to the next at 25 fps, 0.1-0.4 across a cut."""
    return float(np.abs(a - b).mean())


class CutDetector:
    """A hard cut is a thumbnail change above ``threshold`` that is also several times the
    recent typical change (so fast but continuous motion, e.g. a pan, is not a cut).
    Gradual transitions (fades, dissolves) are not detected."""

    def __init__(self, threshold: float = 0.1, ratio: float = 3.0, history: int = 12) -> None:
        self.threshold, self.ratio, self.history = threshold, ratio, history
        self._prev: np.ndarray | None = None
        self._recent: list[float] = []

    def __call__(self, frame: np.ndarray) -> bool:
        """Is ``frame`` (grey or RGB, any size) the first of a new shot?"""
        sig = cut_signature(frame)
        prev, self._prev = self._prev, sig
        if prev is None:
            return False
        d = cut_distance(prev, sig)
        typical = float(np.median(self._recent)) if self._recent else 0.0
        cut = d > self.threshold and d > self.ratio * typical
        self._recent = [] if cut else [*self._recent, d][-self.history :]
        return cut


# ------------------------------------------------------------------------------- tracking


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two square boxes (cx, cy, side)."""
    ix = max(0.0, min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2))
    iy = max(0.0, min(a[1] + a[2] / 2, b[1] + b[2] / 2) - max(a[1] - a[2] / 2, b[1] - b[2] / 2))
    inter = ix * iy
    return inter / (a[2] ** 2 + b[2] ** 2 - inter + 1e-9)


@dataclass
class Track:
    """One face followed through consecutive detections. ``frames``/``faces`` are the detection
    frames (25-fps indices) and the detected face at each; ``start``/``end`` the frames the track
    covers (detections held for up to one detection interval at both ends)."""

    frames: list[int]
    faces: list[Face]
    start: int = 0
    end: int = 0  # exclusive

    def raw_boxes(self) -> np.ndarray:
        """(end - start, 3) boxes for every covered frame, linear between detections."""
        t = np.arange(self.start, self.end)
        det = np.array([f.box for f in self.faces])
        return np.stack([np.interp(t, self.frames, det[:, j]) for j in range(3)], axis=1)


def link_tracks(
    detections: dict[int, list[Face]],
    cuts: set[int],
    n_frames: int,
    every: int,
    max_gap: int,
    min_iou: float = 0.2,
) -> tuple[list[Track], set[int]]:
    """Link per-frame detections into tracks of one face.

    A track follows the face that overlaps its last box most (IoU >= ``min_iou``); it starts on
    the largest face. It ends at a scene cut (``cuts``: frames that begin a new shot), after
    ``max_gap`` frames without a detection, or when the followed face jumps away (no overlap),
    which is returned as a *jump* (the first frame of the next track) so a clip never straddles
    it. Tracks never overlap in time. Detections at frames ``>= n_frames`` (video past the end of
    its speech, say) are ignored.
    """
    tracks: list[Track] = []
    jumps: set[int] = set()
    cur: Track | None = None
    for k in sorted(k for k in detections if k < n_frames):
        faces = detections[k]
        if cur is not None:
            cut_between = any(cur.frames[-1] < c <= k for c in cuts)
            if cut_between or k - cur.frames[-1] > max_gap:
                tracks.append(cur)
                cur = None
        if not faces:
            continue
        if cur is None:
            cur = Track([k], [faces[0]])
            continue
        prev = cur.faces[-1].box
        best = max(faces, key=lambda f: iou(prev, f.box))
        if iou(prev, best.box) >= min_iou:
            cur.frames.append(k)
            cur.faces.append(best)
        else:
            tracks.append(cur)
            jumps.add(k)
            cur = Track([k], [faces[0]])
    if cur is not None:
        tracks.append(cur)
    # coverage: hold each end for up to one detection interval, never across a cut, a jump or
    # the neighbouring track
    bounds = sorted(cuts | jumps | {0, n_frames})
    for i, tr in enumerate(tracks):
        lo = max(b for b in bounds if b <= tr.frames[0])
        hi = min(b for b in bounds if b > tr.frames[-1])
        start = max(lo, tr.frames[0] - (every - 1))
        end = min(hi, tr.frames[-1] + every)
        if i > 0:
            start = max(start, tracks[i - 1].frames[-1] + 1)
        if i + 1 < len(tracks):
            end = min(end, tracks[i + 1].frames[0])
        tr.start, tr.end = start, end
    for i in range(1, len(tracks)):  # a held end may not run into the next track's held start
        tracks[i].start = max(tracks[i].start, tracks[i - 1].end)
    return tracks, jumps


def other_faces(faces: list[Face], main: Face, min_rel_size: float, min_score: float) -> int:
    """Faces besides ``main`` that are large and confident enough to count as another person."""
    return sum(
        f is not main
        and f.size >= min_rel_size * main.size
        and f.score >= min_score
        and iou(f.box, main.box) < 0.3
        for f in faces
    )


# ------------------------------------------------------------------------------- cropping


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter along axis 0 with edge padding (``sigma`` in samples; 0: unchanged)."""
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, [(r, r)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    return np.stack(
        [np.convolve(pad[:, j], k, mode="valid") for j in range(x.shape[1])], axis=1
    ).astype(x.dtype)


def crop_boxes(
    face_boxes: np.ndarray, margin: float, lift: float, width: int, height: int
) -> np.ndarray:
    """Square crops (cx, cy, side) from face boxes: ``margin`` times the face, centred ``lift``
    face-heights above the face centre (the HOG box runs from the brows to the chin, so the
    head's centre is above it), shrunk to fit the frame and shifted inside it."""
    cx, cy, s = face_boxes[:, 0], face_boxes[:, 1], face_boxes[:, 2]
    side = np.minimum(margin * s, min(width, height))
    cy = cy - lift * s
    cx = np.clip(cx, side / 2, width - side / 2)
    cy = np.clip(cy, side / 2, height - side / 2)
    return np.stack([cx, cy, side], axis=1)


def crop_frame(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Sample the square ``box`` (cx, cy, side) of ``frame`` at ``size`` x ``size`` pixels with
    sub-pixel placement (an integer crop would add up to a pixel of jitter, magnified by the
    resize). Large reductions are pre-shrunk with area averaging to avoid aliasing."""
    cx, cy, side = (float(v) for v in box)
    scale = size / side
    if scale < 0.5:  # area-average to about twice the output first
        f = min(1.0, 2 * scale)
        h, w = frame.shape[:2]
        frame = cv2.resize(frame, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        fx, fy = frame.shape[1] / w, frame.shape[0] / h
        cx, cy, side, scale = cx * fx, cy * fy, side * fx, size / (side * fx)
    # Boxes are in continuous coordinates (pixel i spans [i, i+1]); OpenCV indexes pixel centres.
    # Output pixel u sits at x0 + (u + 0.5) / scale, so u = scale * (i + 0.5 - x0) - 0.5.
    x0, y0 = cx - side / 2, cy - side / 2
    m = np.array(
        [[scale, 0, scale * (0.5 - x0) - 0.5], [0, scale, scale * (0.5 - y0) - 0.5]],
        dtype=np.float64,
    )
    return cv2.warpAffine(
        frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
