"""Where a SynthTalk face's mouth and eyes are in each frame: pixel boxes from a clip's track.

A SynthTalk track (``track/<id>.json``) stores no boxes or landmarks, but everything they follow
from: the identity's drawing parameters (``face``), the frame size and the head pose per frame
(``pose``: ``tx``, ``ty``, ``tilt``, ``scale``). The renderer draws the mouth and each eye into
a fixed patch of the unposed head (``FaceRenderer.mouth_box`` and ``eye_boxes``: the parts it
redraws every frame, lips and lids with a margin) and then warps the whole head by the pose
about its neck pivot. The boxes here are those patches carried through the same warp: the
axis-aligned bounds of each warped patch, rounded outwards and clipped to the frame.
"""

from __future__ import annotations

import numpy as np

from readtalk.data.synthtalk.identity import Identity
from readtalk.data.synthtalk.render import FaceRenderer

REGIONS = ("mouth", "eyes")


def has_geometry(track: dict) -> bool:
    """Whether a track holds what ``synthtalk_regions`` needs (SynthTalk's do)."""
    return all(k in track for k in ("face", "pose", "size"))


def _warp(box: tuple[int, int, int, int], pose: dict, pivot: np.ndarray, S: int) -> np.ndarray:
    """One patch ``(x0, y0, w, h)`` through each frame's head warp -> float (F, 4) bounds
    ``(x0, y0, x1, y1)``. The warp is ``FaceRenderer.render``'s: rotation by ``tilt`` and
    scaling by ``scale`` about ``pivot``, then the translation ``(tx, ty) * S``."""

    x0, y0, w, h = box
    cx = np.array([x0, x0 + w, x0, x0 + w], np.float64) - pivot[0]  # (4,) corners
    cy = np.array([y0, y0, y0 + h, y0 + h], np.float64) - pivot[1]
    ang = np.radians(np.asarray(pose["tilt"], np.float64))[:, None]  # (F, 1)
    scale = np.asarray(pose["scale"], np.float64)[:, None]
    ca, sa = np.cos(ang) * scale, np.sin(ang) * scale
    xs = pivot[0] + ca * cx - sa * cy + np.asarray(pose["tx"], np.float64)[:, None] * S  # (F, 4)
    ys = pivot[1] + sa * cx + ca * cy + np.asarray(pose["ty"], np.float64)[:, None] * S
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


def synthtalk_regions(
    track: dict, size: int | None = None, frames: int | None = None
) -> dict[str, np.ndarray]:
    """Per-frame pixel boxes of the mouth and of the two eyes of a SynthTalk clip.

    ``track``: the clip's track (at least ``face``, ``pose`` and ``size``); ``size``: the frame
    size the boxes are for (default the track's own; the frames scaled as ``fit_size`` scales a
    square frame); ``frames``: keep the first ``frames`` frames. Returns ``{"mouth": int (F, 1,
    4), "eyes": int (F, 2, 4)}`` of boxes ``(x0, y0, x1, y1)`` (end exclusive), the layout
    ``pixel.laplacian_variance`` takes."""

    if not has_geometry(track):
        raise ValueError("not a SynthTalk track: it needs face, pose and size")
    S = int(track["size"])
    renderer = FaceRenderer(Identity.from_dict(track["face"]), S)
    pose = {
        k: np.asarray(track["pose"][k], np.float64)[:frames] for k in ("tx", "ty", "tilt", "scale")
    }
    k = (size or S) / S
    out = {}
    for name, patches in (("mouth", [renderer.mouth_box]), ("eyes", renderer.eye_boxes)):
        b = np.stack([_warp(p, pose, renderer.pivot, S) for p in patches], axis=1)  # (F, K, 4)
        b = np.clip(b, 0, S) * k
        lo, hi = np.floor(b[..., :2]), np.ceil(b[..., 2:])
        out[name] = np.concatenate([lo, hi], axis=-1).astype(np.int64)
    return out
