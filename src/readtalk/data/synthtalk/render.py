"""Procedural 2-D talking-face renderer for SynthTalk.

An identity (face shape, skin, hair, eyes, brows, lips, clothes, background) is drawn once per
clip into layers at 4x supersampling and area-downsampled (anti-aliasing). Per frame only three
small patches are redrawn (the mouth from its parameters, and the two eyes for blinks and gaze);
the head layer is then warped by the head pose (translation, tilt, scale about the neck) and
composited between the background and the clothes. That keeps a 256-px frame at a few ms.

All geometry is in canonical units of the frame size S (x right, y down). The mouth interior
uses a reserved colour (``CAVITY``) that no identity palette comes near, which is what lets
``mouth_reader`` measure the mouth opening of any frame. Identities and their palettes are in
``identity``, the supersampled canvas and its primitives in ``canvas``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from readtalk.data.synthtalk.canvas import (
    SHIFT,
    SS,
    ZOOM,
    Canvas,
    copy_canvas,
    ellipse_pts,
    shade,
    to_frame,
)
from readtalk.data.synthtalk.identity import CAVITY, TEETH, TONGUE, Identity, seam_color


def face_outline(idn: Identity, n: int = 96) -> np.ndarray:
    th = np.linspace(0, 2 * math.pi, n, endpoint=False)
    s = np.sin(th)
    narrow = np.where(s > 0, 1 - (1 - idn.jaw) * np.abs(s) ** 2.2, 1.0)
    x = 0.5 + idn.face_w * np.cos(th) * narrow
    y = idn.cy + idn.face_h * np.sign(s) * np.abs(s) ** np.where(s > 0, 0.9, 1.1)
    return np.stack([x, y], 1)


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
        c = Canvas(self.S)
        self._hair_behind(c)
        self._neck_ears_face(c)
        self._hair_on_top(c)
        self._brows(c)
        self._nose(c)
        hi_base = copy_canvas(c)  # base for the per-frame patches: no eyes, no mouth yet
        if self.idn.glasses:
            self._glasses(c)
            hi_base = copy_canvas(c)
        pm, a = c.downsample()
        return pm, a, hi_base

    def _hair_behind(self, c: Canvas) -> None:
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
            c.poly(np.concatenate([crown, fall]), shade(hair, 0.85))
        if idn.hair_style == "bob":
            c.ellipse(
                (cx, idn.cy - 0.02), (idn.face_w * 1.3 * hv, idn.face_h * 1.02), shade(hair, 0.85)
            )
        if idn.hair_style == "bun":
            c.ellipse((cx, top - 0.03), (0.05 * hv, 0.045 * hv), hair)

    def _neck_ears_face(self, c: Canvas) -> None:
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
            shade(skin, 0.86),
        )
        for sx in (-1, 1):
            c.ellipse(
                (cx + sx * idn.face_w * 0.97, idn.cy + 0.01), (0.028, 0.048), shade(skin, 0.93)
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

    def _hair_on_top(self, c: Canvas) -> None:
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
                    shade(hair, rng.uniform(0.85, 1.1)),
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

    def _brows(self, c: Canvas) -> None:
        idn = self.idn
        cx = 0.5
        for sx in (-1, 1):
            ex = cx + sx * idn.eye_dx
            by = idn.eye_y - idn.brow_y
            xs = np.linspace(-1.2, 1.2, 9) * idn.eye_w
            ys = by - 0.006 * (1 - (xs / (1.2 * idn.eye_w)) ** 2) + sx * xs * idn.brow_tilt * 0.2
            c.polyline(np.stack([ex + sx * xs, ys], 1), shade(idn.hair, 0.8), idn.brow_thick)

    def _nose(self, c: Canvas) -> None:
        idn, skin = self.idn, self.idn.skin
        cx = 0.5
        ny = idn.eye_y + idn.nose_len
        c.polyline(
            np.array(
                [[cx + 0.008, idn.eye_y + 0.02], [cx + 0.012, ny - 0.008], [cx + 0.004, ny + 0.004]]
            ),
            shade(skin, 0.82),
            0.005,
            0.6,
        )
        for sx in (-1, 1):
            c.ellipse((cx + sx * 0.012, ny + 0.004), (0.007, 0.004), shade(skin, 0.6), 0.0, 0.8)

    def _glasses(self, c: Canvas) -> None:
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
        c = Canvas(S)
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
    def _patch(self, key: str, box) -> Canvas:
        x0, y0, w, h = box
        c = Canvas(self.S, x0, y0, w, h)
        img, a = self._bases[key]
        c.img[...] = img
        c.alpha[...] = a
        return c

    def draw_mouth(self, c: Canvas, st: FrameState) -> None:
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
            shade(idn.lips, 1.15),
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
        inner = Canvas(self.S, c.x0, c.y0, c.w, c.h)
        inner.img[...] = CAVITY
        inner.alpha[...] = 1
        xt = x[4:-4]
        teeth = np.concatenate(
            [P(xt, y_top[4:-4] - 0.01), P(xt[::-1], (y_top + 0.2 * g * bump)[4:-4][::-1])]
        )
        inner.poly(teeth, TEETH)
        inner.ellipse((cx, cy + 0.62 * g), (hw * 0.5, 0.14 * g), TONGUE)
        c.img += (inner.img - c.img) * m[..., None]

    def draw_eye(self, c: Canvas, sx: int, st: FrameState) -> None:
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
        inner = Canvas(self.S, c.x0, c.y0, c.w, c.h)
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
        inner.poly(lid_poly, shade(idn.skin, 0.92))
        c.img += (inner.img - c.img) * m[..., None]
        c.polyline(P(x, lid), (40, 30, 30), 0.0035 + 0.002 * b)

    def _paste(self, pm: np.ndarray, a: np.ndarray, c: Canvas) -> None:
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


def mouth_geometry(idn: Identity, st: FrameState) -> tuple[float, float]:
    """Half width of the mouth and the height of the gap between the lips (canonical units)."""
    hw = idn.mouth_w * (0.9 + 0.3 * (st.width - 0.5) - 0.28 * st.round)
    return hw, st.open * idn.mouth_w * 1.3


def mouth_measures(idn: Identity, st: FrameState) -> tuple[float, float]:
    """Ground truth in frame units (fractions of S, head scale included): the lip gap height
    and the mouth width, the quantities ``mouth_reader`` estimates from pixels."""
    hw, g = mouth_geometry(idn, st)
    return g * ZOOM * st.scale, 2 * hw * ZOOM * st.scale
