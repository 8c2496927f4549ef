"""Procedural 2-D talking-face renderer for SynthTalk.

An identity (face shape, skin, hair, eyes, brows, lips, clothes, background) is drawn once per
clip into layers at 4x supersampling and area-downsampled (anti-aliasing). Per frame only three
small patches are redrawn (the mouth from its parameters, and the two eyes for blinks and gaze);
the head layer is then warped by the head pose (translation, tilt, scale about the neck) and
composited between the background and the clothes. That keeps a 256-px frame at a few ms.

All geometry is in canonical units of the frame size S (x right, y down). The mouth interior
uses a reserved colour (``CAVITY``) that no identity palette comes near, which is what lets
``mouth_reader`` measure the mouth opening of any frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

SS = 4  # supersampling factor
SHIFT = 4  # cv2 sub-pixel bits
CAVITY = (62, 8, 32)  # RGB of the mouth interior; reserved (see mouth_reader)
TEETH = (236, 232, 218)
TONGUE = (196, 92, 104)
ZOOM = 1.3  # canonical units are magnified about the frame centre so the face fills the frame
HAIR_STYLES = ("short", "long", "bob", "curly", "bun", "buzz", "side")


@dataclass(frozen=True)
class Identity:
    """Everything that makes one SynthTalk person look like themselves (canonical units)."""

    face_w: float  # half width
    face_h: float  # half height
    jaw: float  # chin width relative to cheek width
    cy: float  # face centre y
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: str
    hair_volume: float
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    iris: tuple[int, int, int]
    brow_y: float
    brow_thick: float
    brow_tilt: float
    nose_len: float
    mouth_y: float
    mouth_w: float
    lip_top: float
    lip_bottom: float
    lips: tuple[int, int, int]
    clothes: tuple[int, int, int]
    collar: str
    bg_top: tuple[int, int, int]
    bg_bottom: tuple[int, int, int]
    glasses: bool
    blush: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Identity:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _clip_rgb(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(x) for x in np.clip(np.round(c), 0, 255))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return 255 * np.array(__import__("colorsys").hsv_to_rgb(h % 1.0, s, v))


def _safe_color(rng: np.random.Generator, s_range=(0.15, 0.6), v_range=(0.45, 0.95)) -> tuple:
    """A clothes/background colour kept far from the reserved mouth-interior colour."""
    while True:
        hue = rng.uniform()
        # no purple-magenta-red hues: dark hair over them reads as the interior after 4:2:0
        if hue > 0.72 or hue < 0.03:
            continue
        c = _hsv(hue, rng.uniform(*s_range), rng.uniform(*v_range))
        if not _cavity_like(c):
            return _clip_rgb(c)


def cavity_features(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> (..., 3) features (R-G, B-G, mean): dark magenta-red is far from skin,
    lips and hair along the two chroma axes, which is what makes the interior easy to find."""
    rgb = np.asarray(rgb, np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([r - g, b - g, (r + g + b) / 3], axis=-1)


def cavity_distance(rgb: np.ndarray) -> np.ndarray:
    """Distance of each colour from the reserved mouth-interior colour in feature space."""
    return np.linalg.norm(cavity_features(rgb) - cavity_features(np.array(CAVITY)), axis=-1)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of (..., 3) RGB."""
    return np.asarray(rgb, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


# The mouth reader counts luma <= DARK as interior and >= BRIGHT as not; CAVITY sits well below
# DARK, and lips and the seam between closed lips are kept above MIN_LIP_LUMA > BRIGHT.
DARK, BRIGHT = 32.0, 54.0
MIN_LIP_LUMA = 56.0
PALETTE_MIN_DISTANCE = 45.0  # every identity colour (skin, lips, hair, clothes, bg) is this far


def _cavity_like(c: np.ndarray) -> bool:
    return bool(cavity_distance(c) < PALETTE_MIN_DISTANCE)


def _lip_color(base: np.ndarray, rng: np.random.Generator) -> tuple:
    """Lip colour: jittered, unlike CAVITY, and bright enough that even the seam between the
    closed lips (``seam_color``) stays above MIN_LIP_LUMA."""
    while luma(seam_color(base)) < MIN_LIP_LUMA:
        base = base * 1.06 + 2
    lips = _away_from_cavity(base, rng, 6.0)
    while luma(seam_color(lips)) < MIN_LIP_LUMA:
        lips = _clip_rgb(np.array(lips) * 1.06 + 2)
    return lips


def _away_from_cavity(base: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple:
    """``base`` plus colour jitter, re-drawn (and lightened if need be) until it is at least
    PALETTE_MIN_DISTANCE from the mouth-interior colour."""
    base = np.asarray(base, np.float64)
    while True:
        for _ in range(20):
            c = base + rng.normal(0, jitter, 3)
            if not _cavity_like(c):
                return _clip_rgb(c)
        base = base * 1.1 + 4


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity. Palettes exclude the mouth-interior colour by construction."""
    # Skin: a light-to-dark tone line with a little hue jitter.
    tone = rng.uniform()
    light, dark = np.array([246, 214, 190]), np.array([110, 70, 48])
    skin = light * (1 - tone) + dark * tone + rng.normal(0, 6, 3) * np.array([1.0, 0.8, 0.8])
    hair_palette = [
        (28, 26, 28),
        (52, 40, 34),
        (88, 62, 44),
        (130, 90, 55),
        (200, 160, 100),
        (225, 200, 140),
        (150, 150, 150),
        (215, 215, 210),
        (160, 85, 45),
    ]
    hair = _away_from_cavity(np.array(hair_palette[rng.integers(len(hair_palette))]), rng, 4.0)
    iris_palette = [(70, 45, 25), (40, 90, 140), (60, 110, 70), (110, 80, 45), (80, 100, 120)]
    iris = iris_palette[rng.integers(len(iris_palette))]
    lip_base = skin * np.array([0.85, 0.62, 0.65]) + np.array([25, 5, 10])
    lips = _lip_color(lip_base, rng)
    face_w = rng.uniform(0.165, 0.2)
    cy = rng.uniform(0.44, 0.48)
    return Identity(
        face_w=face_w,
        face_h=face_w * rng.uniform(1.18, 1.38),
        jaw=rng.uniform(0.45, 0.8),
        cy=cy,
        skin=_clip_rgb(skin),
        hair=_clip_rgb(hair),
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hair_volume=rng.uniform(0.8, 1.2),
        eye_dx=rng.uniform(0.068, 0.082),
        eye_y=cy - rng.uniform(0.015, 0.04),
        eye_w=rng.uniform(0.027, 0.035),
        eye_h=rng.uniform(0.012, 0.017),
        iris=iris,
        brow_y=rng.uniform(0.035, 0.05),
        brow_thick=rng.uniform(0.006, 0.013),
        brow_tilt=rng.uniform(-0.15, 0.25),
        nose_len=rng.uniform(0.075, 0.1),
        mouth_y=cy + rng.uniform(0.135, 0.155),
        mouth_w=rng.uniform(0.058, 0.07),
        lip_top=rng.uniform(0.007, 0.012),
        lip_bottom=rng.uniform(0.009, 0.016),
        lips=_clip_rgb(lips),
        clothes=_safe_color(rng, (0.2, 0.7), (0.3, 0.9)),
        collar=("round", "v", "shirt")[rng.integers(3)],
        bg_top=_safe_color(rng, (0.05, 0.35), (0.55, 0.95)),
        bg_bottom=_safe_color(rng, (0.05, 0.35), (0.45, 0.9)),
        glasses=bool(rng.uniform() < 0.2),
        blush=float(rng.uniform(0.0, 0.25)),
    )


# ------------------------------------------------------------------------------ drawing helpers


class _Canvas:
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


def _shade(color, f: float) -> tuple[float, float, float]:
    return tuple(float(min(255.0, x * f)) for x in color)


def face_outline(idn: Identity, n: int = 96) -> np.ndarray:
    th = np.linspace(0, 2 * math.pi, n, endpoint=False)
    s = np.sin(th)
    narrow = np.where(s > 0, 1 - (1 - idn.jaw) * np.abs(s) ** 2.2, 1.0)
    x = 0.5 + idn.face_w * np.cos(th) * narrow
    y = idn.cy + idn.face_h * np.sign(s) * np.abs(s) ** np.where(s > 0, 0.9, 1.1)
    return np.stack([x, y], 1)


# --------------------------------------------------------------------------------- the renderer


@dataclass(frozen=True)
class FrameState:
    """Per-frame parameters that drive the face."""

    open: float = 0.0
    width: float = 0.5
    round: float = 0.0
    blink: float = 0.0  # 0 open eyes, 1 closed
    gaze_x: float = 0.0  # -1..1 of the free iris travel
    gaze_y: float = 0.0
    tx: float = 0.0  # canonical units
    ty: float = 0.0
    tilt: float = 0.0  # degrees, positive = clockwise on screen
    scale: float = 1.0


class FaceRenderer:
    """Renders frames of one identity at one size: build once per clip, render per frame."""

    def __init__(self, identity: Identity, size: int) -> None:
        if size % 32 or size < 64:
            raise ValueError(f"size must be a multiple of 32 and at least 64, got {size}")
        self.idn, self.S = identity, size
        self.bg = self._background()
        self.head_pm, self.head_a, hi = self._head()
        self.body_pm, self.body_a = self._body()
        self.pivot = to_frame([0.5, identity.cy + 0.2]) * size
        # Patches redrawn every frame: (x0, y0, w, h) in frame pixels + the hi-res base crop.
        idn = identity
        mw = idn.mouth_w * 1.25 + idn.lip_top
        self.mouth_box = self._box(0.5 - mw, idn.mouth_y - 0.055, 0.5 + mw, idn.mouth_y + 0.085)
        self.eye_boxes = [
            self._box(
                0.5 + sx * idn.eye_dx - idn.eye_w * 1.5,
                idn.eye_y - idn.eye_h * 2.2,
                0.5 + sx * idn.eye_dx + idn.eye_w * 1.5,
                idn.eye_y + idn.eye_h * 1.8,
            )
            for sx in (-1, 1)
        ]
        self._bases = {}
        for key, (x0, y0, w, h) in [
            ("mouth", self.mouth_box),
            ("eye0", self.eye_boxes[0]),
            ("eye1", self.eye_boxes[1]),
        ]:
            sl = np.s_[y0 * SS : (y0 + h) * SS, x0 * SS : (x0 + w) * SS]
            self._bases[key] = (hi.img[sl].copy(), hi.alpha[sl].copy())

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        S = self.S
        (x0, y0), (x1, y1) = to_frame([x0, y0]), to_frame([x1, y1])
        a, b = int(math.floor(x0 * S)), int(math.floor(y0 * S))
        return a, b, int(math.ceil(x1 * S)) - a, int(math.ceil(y1 * S)) - b

    # --- static layers -------------------------------------------------------------------------
    def _background(self) -> np.ndarray:
        S = self.S
        y = np.linspace(0, 1, S, dtype=np.float32)[:, None, None]
        top, bot = np.array(self.idn.bg_top, np.float32), np.array(self.idn.bg_bottom, np.float32)
        bg = top * (1 - y) + bot * y
        xx = np.linspace(-1, 1, S, dtype=np.float32)
        vign = 1 - 0.12 * (xx[None, :] ** 2 + xx[:, None] ** 2)
        return np.broadcast_to(bg, (S, S, 3)) * vign[..., None]

    def _head(self):
        """The static head layer (frame-resolution premultiplied RGB and alpha) and the hi-res
        canvas the per-frame eye and mouth patches start from."""
        c = _Canvas(self.S)
        self._hair_behind(c)
        self._neck_ears_face(c)
        self._hair_on_top(c)
        self._brows(c)
        self._nose(c)
        hi_base = _copy_canvas(c)  # base for the per-frame patches: no eyes, no mouth yet
        if self.idn.glasses:
            self._glasses(c)
            hi_base = _copy_canvas(c)
        pm, a = c.downsample()
        return pm, a, hi_base

    def _hair_behind(self, c: _Canvas) -> None:
        """Hair behind the head (long, bob, bun)."""
        idn, hair = self.idn, self.idn.hair
        cx = 0.5
        hv = idn.hair_volume
        top = idn.cy - idn.face_h
        if idn.hair_style == "long":
            crown = ellipse_pts(
                (cx, idn.cy - 0.02),
                (idn.face_w * 1.28, idn.face_h * 1.05),
                n=48,
                a0=math.pi,
                a1=2 * math.pi,
            )
            fall = ellipse_pts(
                (cx, idn.cy + 0.2), (idn.face_w * 1.42 * hv, 0.14), n=32, a0=0.0, a1=math.pi
            )
            c.poly(np.concatenate([crown, fall]), _shade(hair, 0.85))
        if idn.hair_style == "bob":
            c.ellipse(
                (cx, idn.cy - 0.02), (idn.face_w * 1.3 * hv, idn.face_h * 1.02), _shade(hair, 0.85)
            )
        if idn.hair_style == "bun":
            c.ellipse((cx, top - 0.03), (0.05 * hv, 0.045 * hv), hair)

    def _neck_ears_face(self, c: _Canvas) -> None:
        """Neck and ears, the face, and the cheek blush."""
        idn, skin = self.idn, self.idn.skin
        cx = 0.5
        nw = idn.face_w * 0.48
        c.poly(
            np.array(
                [
                    [cx - nw, idn.cy + 0.08],
                    [cx + nw, idn.cy + 0.08],
                    [cx + nw * 1.1, 1.1],
                    [cx - nw * 1.1, 1.1],
                ]
            ),
            _shade(skin, 0.86),
        )
        for sx in (-1, 1):
            c.ellipse(
                (cx + sx * idn.face_w * 0.97, idn.cy + 0.01), (0.028, 0.048), _shade(skin, 0.93)
            )
        c.poly(face_outline(idn), skin)
        # soft jaw shadow on the neck side and cheek blush
        for sx in (-1, 1):
            c.ellipse(
                (cx + sx * idn.face_w * 0.55, idn.mouth_y - 0.03),
                (0.035, 0.022),
                (230, 120, 120),
                opacity=idn.blush,
            )

    def _hair_on_top(self, c: _Canvas) -> None:
        """Hair on top of the head: cap and fringe, curls, or buzz-cut stubble."""
        idn, skin, hair = self.idn, self.idn.skin, self.idn.hair
        cx = 0.5
        hv = idn.hair_volume
        top = idn.cy - idn.face_h
        if idn.hair_style in ("short", "long", "bob", "bun", "side", "curly"):
            cap = ellipse_pts(
                (cx, top + idn.face_h * 0.42),
                (idn.face_w * 1.06 * hv, idn.face_h * 0.55 * hv),
                n=48,
                a0=math.pi,
                a1=2 * math.pi,
            )
            fringe_y = top + idn.face_h * (0.32 if idn.hair_style != "side" else 0.38)
            fringe = np.array(
                [
                    [cx + idn.face_w * 1.02, fringe_y + 0.05],
                    [cx + idn.face_w * 0.4, fringe_y],
                    [
                        cx - idn.face_w * (0.2 if idn.hair_style == "side" else 0.5),
                        fringe_y + (0.03 if idn.hair_style == "side" else 0.0),
                    ],
                    [cx - idn.face_w * 1.02, fringe_y + 0.05],
                ]
            )
            c.poly(np.concatenate([cap, fringe]), hair)
        if idn.hair_style == "curly":
            rng = np.random.default_rng(int(idn.face_w * 1e6))
            for k in range(26):
                a = math.pi + math.pi * k / 25
                r = idn.face_w * 1.05 * hv
                c.ellipse(
                    (cx + r * math.cos(a), top + idn.face_h * 0.45 + r * 1.05 * math.sin(a)),
                    (0.03, 0.03),
                    _shade(hair, rng.uniform(0.85, 1.1)),
                )
        if idn.hair_style == "buzz":
            # stubble: hair blended into the skin, inside the head outline
            cap = ellipse_pts(
                (cx, top + idn.face_h * 0.42),
                (idn.face_w * 0.985, idn.face_h * 0.43),
                n=48,
                a0=math.pi,
                a1=2 * math.pi,
            )
            c.poly(cap, tuple(0.45 * np.array(skin) + 0.55 * np.array(hair)))

    def _brows(self, c: _Canvas) -> None:
        idn = self.idn
        cx = 0.5
        for sx in (-1, 1):
            ex = cx + sx * idn.eye_dx
            by = idn.eye_y - idn.brow_y
            xs = np.linspace(-1.2, 1.2, 9) * idn.eye_w
            ys = by - 0.006 * (1 - (xs / (1.2 * idn.eye_w)) ** 2) + sx * xs * idn.brow_tilt * 0.2
            c.polyline(np.stack([ex + sx * xs, ys], 1), _shade(idn.hair, 0.8), idn.brow_thick)

    def _nose(self, c: _Canvas) -> None:
        idn, skin = self.idn, self.idn.skin
        cx = 0.5
        ny = idn.eye_y + idn.nose_len
        c.polyline(
            np.array(
                [[cx + 0.008, idn.eye_y + 0.02], [cx + 0.012, ny - 0.008], [cx + 0.004, ny + 0.004]]
            ),
            _shade(skin, 0.82),
            0.005,
            0.6,
        )
        for sx in (-1, 1):
            c.ellipse((cx + sx * 0.012, ny + 0.004), (0.007, 0.004), _shade(skin, 0.6), 0.0, 0.8)

    def _glasses(self, c: _Canvas) -> None:
        idn = self.idn
        cx = 0.5
        # light metal or gold rims: nothing dark may sit near the mouth reader's search area
        rim = (150, 150, 160) if idn.hair[0] < 120 else (190, 160, 90)
        for sx in (-1, 1):
            g = ellipse_pts((cx + sx * idn.eye_dx, idn.eye_y), (idn.eye_w * 1.6, idn.eye_h * 2.4))
            c.polyline(np.concatenate([g, g[:1]]), rim, 0.005)
        c.polyline(
            np.array(
                [
                    [cx - idn.eye_dx + idn.eye_w * 1.6, idn.eye_y],
                    [cx + idn.eye_dx - idn.eye_w * 1.6, idn.eye_y],
                ]
            ),
            rim,
            0.004,
        )

    def _body(self):
        idn, S = self.idn, self.S
        c = _Canvas(S)
        cx = 0.5
        sh_y = idn.cy + idn.face_h + 0.04
        body = np.concatenate(
            [
                np.array([[cx - 0.42, 1.05], [cx - 0.4, sh_y + 0.09]]),
                ellipse_pts((cx, sh_y + 0.09), (0.34, 0.09), n=32, a0=math.pi, a1=2 * math.pi),
                np.array([[cx + 0.4, sh_y + 0.09], [cx + 0.42, 1.05]]),
            ]
        )
        c.poly(body, idn.clothes)
        nw = idn.face_w * 0.5
        if idn.collar == "v":
            hole = np.array([[cx - nw, sh_y - 0.02], [cx + nw, sh_y - 0.02], [cx, sh_y + 0.1]])
        else:
            hole = ellipse_pts((cx, sh_y - 0.02), (nw, 0.045 if idn.collar == "round" else 0.06))
        # the neckline shows the neck behind: cut the hole out of the clothes
        p = c.pts(hole)
        m = c.mask(lambda mm: cv2.fillPoly(mm, [p], 255, cv2.LINE_AA, SHIFT))
        c.alpha *= 1 - m
        if idn.collar == "shirt":
            for sx in (-1, 1):
                c.poly(
                    np.array(
                        [
                            [cx + sx * nw * 1.05, sh_y - 0.03],
                            [cx + sx * 0.01, sh_y + 0.05],
                            [cx + sx * nw * 1.4, sh_y + 0.04],
                        ]
                    ),
                    (240, 240, 236),
                )
        return c.downsample()

    # --- per-frame patches ---------------------------------------------------------------------
    def _patch(self, key: str, box) -> _Canvas:
        x0, y0, w, h = box
        c = _Canvas(self.S, x0, y0, w, h)
        img, a = self._bases[key]
        c.img[...] = img
        c.alpha[...] = a
        return c

    def draw_mouth(self, c: _Canvas, st: FrameState) -> None:
        idn = self.idn
        cx, cy = 0.5, idn.mouth_y
        hw, g = mouth_geometry(idn, st)
        x = np.linspace(-hw, hw, 41)
        u = np.clip(1 - (x / hw) ** 2, 0, 1)
        bump = u ** (0.75 - 0.25 * st.round)
        y_top, y_bot = -0.4 * g * bump, 0.6 * g * bump
        tu, tl = idn.lip_top * (1 + 0.35 * st.round), idn.lip_bottom * (1 + 0.25 * st.round)
        cupid = 0.35 * tu * np.exp(-((x / (0.14 * hw)) ** 2))
        y_ou = y_top - tu * u**0.4 + cupid
        y_ol = y_bot + tl * u**0.5
        P = lambda xs, ys: np.stack([cx + xs, cy + ys], 1)  # noqa: E731
        lips = np.concatenate([P(x, y_ou), P(x[::-1], y_ol[::-1])])
        c.poly(lips, idn.lips)
        c.ellipse(
            (cx, cy + y_bot[20] + tl * 0.45),
            (hw * 0.35, tl * 0.22),
            _shade(idn.lips, 1.15),
            opacity=0.5,
        )
        c.polyline(P(x, (y_top + y_bot) / 2), seam_color(idn.lips), 0.0025)
        if g <= 1e-4:
            return
        # interior: cavity, upper teeth (a band under the upper lip), tongue at the bottom;
        # teeth and tongue scale with the gap so the visible cavity grows linearly with it.
        opening = np.concatenate([P(x, y_top), P(x[::-1], y_bot[::-1])])
        p = c.pts(opening)
        m = c.mask(lambda mm: cv2.fillPoly(mm, [p], 255, cv2.LINE_AA, SHIFT))
        inner = _Canvas(self.S, c.x0, c.y0, c.w, c.h)
        inner.img[...] = CAVITY
        inner.alpha[...] = 1
        xt = x[4:-4]
        teeth = np.concatenate(
            [P(xt, y_top[4:-4] - 0.01), P(xt[::-1], (y_top + 0.2 * g * bump)[4:-4][::-1])]
        )
        inner.poly(teeth, TEETH)
        inner.ellipse((cx, cy + 0.62 * g), (hw * 0.5, 0.14 * g), TONGUE)
        c.img += (inner.img - c.img) * m[..., None]

    def draw_eye(self, c: _Canvas, sx: int, st: FrameState) -> None:
        idn = self.idn
        ex, ey = 0.5 + sx * idn.eye_dx, idn.eye_y
        ew, eh = idn.eye_w, idn.eye_h
        x = np.linspace(-ew, ew, 33)
        u = np.clip(1 - (x / ew) ** 2, 0, 1)
        top, bot = -eh * u**0.6, eh * 0.8 * u**0.7
        P = lambda xs, ys: np.stack([ex + xs, ey + ys], 1)  # noqa: E731
        eye = np.concatenate([P(x, top), P(x[::-1], bot[::-1])])
        p = c.pts(eye)
        m = c.mask(lambda mm: cv2.fillPoly(mm, [p], 255, cv2.LINE_AA, SHIFT))
        inner = _Canvas(self.S, c.x0, c.y0, c.w, c.h)
        inner.img[...] = (245, 244, 240)
        inner.alpha[...] = 1
        ir = eh * 1.05
        ix, iy = ex + st.gaze_x * (ew - ir) * 0.6, ey + st.gaze_y * eh * 0.25
        inner.ellipse((ix, iy), (ir, ir), idn.iris)
        inner.ellipse((ix, iy), (ir * 0.45, ir * 0.45), (12, 10, 12))
        inner.ellipse((ix + ir * 0.35, iy - ir * 0.35), (ir * 0.18, ir * 0.18), (255, 255, 255))
        b = float(np.clip(st.blink, 0, 1))
        lid = top + (bot - top) * b
        lid_poly = np.concatenate([P(x, top - 0.004), P(x[::-1], lid[::-1])])
        inner.poly(lid_poly, _shade(idn.skin, 0.92))
        c.img += (inner.img - c.img) * m[..., None]
        c.polyline(P(x, lid), (40, 30, 30), 0.0035 + 0.002 * b)

    def _paste(self, pm: np.ndarray, a: np.ndarray, c: _Canvas) -> None:
        cpm, ca = c.downsample()
        pm[c.y0 : c.y0 + c.h, c.x0 : c.x0 + c.w] = cpm
        a[c.y0 : c.y0 + c.h, c.x0 : c.x0 + c.w] = ca

    def render(self, st: FrameState) -> np.ndarray:
        """One frame as uint8 RGB (S, S, 3)."""
        S = self.S
        pm, a = self.head_pm.copy(), self.head_a.copy()
        mc = self._patch("mouth", self.mouth_box)
        self.draw_mouth(mc, st)
        self._paste(pm, a, mc)
        for k, sx in enumerate((-1, 1)):
            ec = self._patch(f"eye{k}", self.eye_boxes[k])
            self.draw_eye(ec, sx, st)
            self._paste(pm, a, ec)
        layer = np.concatenate([pm, a[..., None]], axis=2)
        ang = math.radians(st.tilt)
        ca, sa = math.cos(ang) * st.scale, math.sin(ang) * st.scale
        px, py = self.pivot
        M = np.array(
            [
                [ca, -sa, px - ca * px + sa * py + st.tx * S],
                [sa, ca, py - sa * px - ca * py + st.ty * S],
            ],
            np.float32,
        )
        warped = cv2.warpAffine(
            layer, M, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        out = warped[..., :3] + self.bg * (1 - warped[..., 3:4])
        out = self.body_pm + out * (1 - self.body_a[..., None])
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def seam_color(lips) -> tuple[float, float, float]:
    """The line between closed lips: darker, half-desaturated lip colour (kept unlike CAVITY)."""
    dark = np.array(lips, np.float64) * 0.8
    return tuple(float(x) for x in 0.5 * dark + 0.5 * dark.mean())


def mouth_geometry(idn: Identity, st: FrameState) -> tuple[float, float]:
    """Half width of the mouth and the height of the gap between the lips (canonical units)."""
    hw = idn.mouth_w * (0.9 + 0.3 * (st.width - 0.5) - 0.28 * st.round)
    return hw, st.open * idn.mouth_w * 1.3


def mouth_measures(idn: Identity, st: FrameState) -> tuple[float, float]:
    """Ground truth in frame units (fractions of S, head scale included): the lip gap height
    and the mouth width, the quantities ``mouth_reader`` estimates from pixels."""
    hw, g = mouth_geometry(idn, st)
    return g * ZOOM * st.scale, 2 * hw * ZOOM * st.scale


def _copy_canvas(c: _Canvas) -> _Canvas:
    d = _Canvas.__new__(_Canvas)
    d.__dict__.update(c.__dict__)
    d.img, d.alpha = c.img.copy(), c.alpha.copy()
    return d
