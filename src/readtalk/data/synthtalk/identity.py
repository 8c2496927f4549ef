"""SynthTalk identities: who a person is (face shape, palette, hair, clothes) and how one is
sampled, with the reserved mouth-interior colour (``CAVITY``) that no identity palette comes
near, which is what lets ``mouth_reader`` measure the mouth opening of any frame.

All geometry is in canonical units of the frame size S (x right, y down); ``render`` draws it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CAVITY = (62, 8, 32)  # RGB of the mouth interior; reserved (see mouth_reader)
TEETH = (236, 232, 218)
TONGUE = (196, 92, 104)
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


def seam_color(lips) -> tuple[float, float, float]:
    """The line between closed lips: darker, half-desaturated lip colour (kept unlike CAVITY)."""
    dark = np.array(lips, np.float64) * 0.8
    return tuple(float(x) for x in 0.5 * dark + 0.5 * dark.mean())
