"""SynthTalk's drawing primitives: an RGBA canvas at 4x supersampling over a window of
canonical space (x right, y down, in units of the frame size S), anti-aliased polygons,
polylines and ellipses on it, and the area-downsampling back to frame resolution.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SS = 4  # supersampling factor
SHIFT = 4  # cv2 sub-pixel bits
ZOOM = 1.3  # canonical units are magnified about the frame centre so the face fills the frame


class Canvas:
    """An RGBA float canvas at SS x resolution covering a window of canonical space."""

    def __init__(
        self, size: int, x0: int = 0, y0: int = 0, w: int | None = None, h: int | None = None
    ) -> None:
        self.size = size  # S, frame size in pixels
        self.x0, self.y0 = x0, y0  # window origin in frame pixels
        self.w, self.h = w or size, h or size
        self.img = np.zeros((self.h * SS, self.w * SS, 3), np.float32)
        self.alpha = np.zeros((self.h * SS, self.w * SS), np.float32)

    def pts(self, xy: np.ndarray) -> np.ndarray:
        """Canonical (N, 2) -> fixed-point canvas pixel coordinates."""
        px = (to_frame(xy) * self.size - np.array([self.x0, self.y0])) * SS
        return np.round(px * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)

    def mask(self, draw) -> np.ndarray:
        m = np.zeros(self.alpha.shape, np.uint8)
        draw(m)
        return m.astype(np.float32) / 255.0

    def paint(self, m: np.ndarray, color, opacity: float = 1.0, sl=np.s_[:, :]) -> None:
        """Blend ``color`` with coverage ``m`` into the canvas (or into its slice ``sl``)."""
        a = m * opacity
        img, alpha = self.img[sl], self.alpha[sl]
        img += (np.array(color, np.float32) - img) * a[..., None]
        alpha += (1.0 - alpha) * a

    def _stamp(self, p: np.ndarray, margin: int, draw, color, opacity: float) -> None:
        """Rasterise ``draw(mask, shifted_points)`` inside the points' bounding box only (plus
        ``margin`` pixels for anti-aliasing and line width) and paint it."""
        lo = (p.reshape(-1, 2).min(0) >> SHIFT) - margin
        hi = (p.reshape(-1, 2).max(0) >> SHIFT) + margin + 2
        H, W = self.alpha.shape
        x0, y0 = max(0, int(lo[0])), max(0, int(lo[1]))
        x1, y1 = min(W, int(hi[0])), min(H, int(hi[1]))
        if x1 <= x0 or y1 <= y0:
            return
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        draw(m, p - np.array([x0 << SHIFT, y0 << SHIFT], np.int32))
        self.paint(m.astype(np.float32) / 255.0, color, opacity, np.s_[y0:y1, x0:x1])

    def poly(self, xy: np.ndarray, color, opacity: float = 1.0) -> None:
        self._stamp(
            self.pts(xy),
            2,
            lambda m, q: cv2.fillPoly(m, [q], 255, cv2.LINE_AA, SHIFT),
            color,
            opacity,
        )

    def polyline(self, xy: np.ndarray, color, thick: float, opacity: float = 1.0) -> None:
        t = max(1, int(round(thick * ZOOM * self.size * SS)))
        self._stamp(
            self.pts(xy),
            t + 2,
            lambda m, q: cv2.polylines(m, [q], False, 255, t, cv2.LINE_AA, SHIFT),
            color,
            opacity,
        )

    def ellipse(self, c, r, color, angle: float = 0.0, opacity: float = 1.0) -> None:
        self.poly(ellipse_pts(c, r, angle), color, opacity)

    def downsample(self) -> tuple[np.ndarray, np.ndarray]:
        """Area-average to frame resolution: premultiplied RGB (float) and alpha."""
        size = (self.w, self.h)
        pm = cv2.resize(self.img * self.alpha[..., None], size, interpolation=cv2.INTER_AREA)
        a = cv2.resize(self.alpha, size, interpolation=cv2.INTER_AREA)
        return pm, a


def to_frame(xy):
    """Canonical coordinates -> frame coordinates in units of S (the zoom about the centre)."""
    return 0.5 + (np.asarray(xy, dtype=np.float64) - 0.5) * ZOOM


def ellipse_pts(
    c, r, angle: float = 0.0, n: int = 64, a0: float = 0.0, a1: float = 2 * math.pi
) -> np.ndarray:
    th = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * math.pi - 1e-6)
    x, y = r[0] * np.cos(th), r[1] * np.sin(th)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([c[0] + ca * x - sa * y, c[1] + sa * x + ca * y], axis=1)


def shade(color, f: float) -> tuple[float, float, float]:
    return tuple(float(min(255.0, x * f)) for x in color)


def copy_canvas(c: Canvas) -> Canvas:
    d = Canvas.__new__(Canvas)
    d.__dict__.update(c.__dict__)
    d.img, d.alpha = c.img.copy(), c.alpha.copy()
    return d
