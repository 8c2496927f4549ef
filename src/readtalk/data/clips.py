"""Planning the clips of one analysed video for ``readtalk prepare``: where each clip of
``frames`` frames goes, its smoothed crop path and reference frame, and why each dropped window
was dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from readtalk.data import faces as fc
from readtalk.data.footage import Analysis
from readtalk.data.prepare_config import PrepareConfig
from readtalk.media import FPS


@dataclass
class ClipPlan:
    start: int
    boxes: np.ndarray  # (frames, 3) crop boxes (cx, cy, side) in source pixels
    ref_frame: int
    ref_box: np.ndarray  # (3,)
    ref_from: str  # "other part" | "same clip"


def plan_clips(
    an: Analysis, voiced: np.ndarray, cfg: PrepareConfig
) -> tuple[list[ClipPlan], list[tuple[str, int, int, str]]]:
    """Place clips greedily from the start of the video and say why each dropped window was
    dropped: (reason, first frame, end frame, detail)."""
    n, F = len(voiced), cfg.frames
    every = cfg.detect_every
    tracks, jumps = fc.link_tracks(an.detections, an.cuts, n, every, cfg.max_gap)
    track_of = np.full(n, -1)
    raw = np.zeros((n, 3))
    smooth = np.zeros((n, 3))
    for i, tr in enumerate(tracks):
        s, e = tr.start, min(tr.end, n)
        if e <= s:
            continue
        track_of[s:e] = i
        r = tr.raw_boxes()[: e - s]
        raw[s:e] = r
        smooth[s:e] = fc.gaussian_smooth(r, cfg.smooth * FPS)
    crops = fc.crop_boxes(smooth, cfg.margin, cfg.lift, an.width, an.height)
    # the tracked face at each detection frame, and whether anyone else is there
    main = {k: f for tr in tracks for k, f in zip(tr.frames, tr.faces, strict=True) if k < n}
    multi = {
        k: fc.other_faces(an.detections[k], f, min_rel_size=0.5, min_score=0.0) > 0
        for k, f in main.items()
        if k in an.scanned
    }
    max_side = min(an.width, an.height)

    def upscale(size: float) -> float:
        return cfg.size / min(cfg.margin * size, max_side)

    plans: list[ClipPlan] = []
    drops: list[tuple[str, int, int, str]] = []
    bounds = sorted(an.cuts | jumps)
    s = 0
    while s + F <= n:
        e = s + F
        inner = [b for b in bounds if s < b < e]
        if inner:
            b = inner[0]
            drops.append(("scene_cut" if b in an.cuts else "face_jump", s, b, ""))
            s = b
            continue
        missing = np.flatnonzero(track_of[s:e] < 0)
        if missing.size:
            drops.append(("no_face", s, s + int(missing[-1]) + 1, ""))
            s += int(missing[-1]) + 1
            continue
        change = np.flatnonzero(np.diff(track_of[s:e]))
        if change.size:  # two tracks meet without a gap: treat as a jump
            drops.append(("face_jump", s, s + int(change[0]) + 1, ""))
            s += int(change[0]) + 1
            continue
        # whole-frame searches are sparse (and the detector misses faces now and then), so
        # they are counted from 1 s before the window to 1 s after it
        ks = [k for k in multi if s - FPS <= k < e + FPS]
        crowded = np.mean([multi[k] for k in ks]) if ks else 0.0
        up = upscale(float(np.median(raw[s:e, 2])))
        speech = float(voiced[s:e].mean())
        if crowded >= 0.3:
            drops.append(("several_faces", s, e, f"in {crowded:.0%} of whole-frame searches"))
        elif up > cfg.max_upscale:
            drops.append(("face_too_small", s, e, f"crop upscaled {up:.1f}x"))
        elif speech < cfg.min_speech:
            drops.append(("silent", s, e, f"{speech:.0%} voiced frames"))
        else:
            if cfg.smooth > 0:
                boxes = crops[s:e]
            else:  # one fixed crop: mean centre, median size
                face = np.array([*raw[s:e, :2].mean(0), np.median(raw[s:e, 2])])[None]
                boxes = np.repeat(
                    fc.crop_boxes(face, cfg.margin, cfg.lift, an.width, an.height), F, axis=0
                )
            ref, ref_from = _pick_reference(main, multi, s, e, upscale, cfg.max_upscale)
            ref_box = crops[ref] if track_of[ref] >= 0 else boxes[0]
            plans.append(ClipPlan(s, boxes, ref, ref_box, ref_from))
        s = e
    return plans, _merge(drops)


def _pick_reference(
    main: dict[int, fc.Face], multi: dict[int, bool], s: int, e: int, upscale, max_up: float
) -> tuple[int, str]:
    """The most frontal (highest detector score) single-face detection frame at least 1 s away
    from the clip [s, e); failing that, any outside it; failing that, the clip's own best."""
    good = {k: f for k, f in main.items() if not multi.get(k) and upscale(f.size) <= max_up}
    for cond in (lambda k: k < s - FPS or k >= e + FPS, lambda k: k < s or k >= e):
        cand = [k for k in good if cond(k)]
        if cand:
            return max(cand, key=lambda k: good[k].score), "other part"
    inside = [k for k in main if s <= k < e] or [s]
    return max(inside, key=lambda k: main[k].score if k in main else 0.0), "same clip"


def _merge(drops: list[tuple[str, int, int, str]]) -> list[tuple[str, int, int, str]]:
    """Join consecutive drops with the same reason (details of the first are kept)."""
    out: list[tuple[str, int, int, str]] = []
    for d in drops:
        if out and out[-1][0] == d[0] and out[-1][2] == d[1]:
            out[-1] = (d[0], out[-1][1], d[2], out[-1][3])
        else:
            out.append(d)
    return out
