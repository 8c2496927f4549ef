"""Training windows of a dataset's videos for VAE and frame-decoder training: random clips,
windows, crops and flips (``ClipSampler``), and the per-pixel loss weights that go with them
(the moving pixels, a fixed mouth box, or each frame's SynthTalk mouth and eye boxes)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from readtalk.data.manifest import load_track, resolve
from readtalk.errors import ReadtalkError
from readtalk.eval.regions import has_geometry, synthtalk_regions
from readtalk.media import fit_size, read_video, to_tensor


class ClipSampler:
    """Random training windows from a dataset's videos, decoded on demand (each clip only as
    far as its window's last frame).

    ``crop`` > 0 trains on ``crop``-pixel squares of the frames instead of whole frames, at
    offsets on the 32-pixel latent grid (so every crop's latents line up with those of the whole
    frame); a fraction ``crop_mouth`` of them is drawn among the crops that hold all of
    ``mouth_box`` (fractions of the frame), the rest anywhere.

    ``bank`` > 0 (single frames only) decodes ``bank`` evenly spaced frames of every clip once,
    on the first batch, and draws the frames from that bank in memory: a step then costs no
    decoding at all (a bank of 8 frames of 904 256-px clips is 1.4 GB).

    ``regions`` (with a bank, SynthTalk clips) makes the box ``sample_with_box`` gives each
    frame's own mouth and eye boxes, from its clip's track (``eval.regions.synthtalk_regions``,
    grown by ``margin`` pixels), instead of the fixed ``mouth_box``."""

    def __init__(
        self,
        records: list[dict],
        frames: int,
        size: int,
        flip: bool,
        crop: int = 0,
        crop_mouth: float = 0.0,
        mouth_box: tuple[float, ...] = (0.34, 0.55, 0.66, 0.76),
        bank: int = 0,
        progress: bool = False,
        regions: bool = False,
        margin: int = 4,
    ) -> None:
        if not records:
            raise ReadtalkError("the dataset has no clips in the train split")
        if bank and frames != 1:
            raise ReadtalkError(f"a frame bank needs single frames (clip_frames=1), not {frames}")
        if regions and not bank:
            raise ReadtalkError("per-frame mouth and eye boxes need a frame bank (frame_bank=N)")
        self.bank, self.progress, self.regions, self.margin = bank, progress, regions, margin
        self._regions: np.ndarray | None = None  # (clips, bank, K, 4) boxes with ``regions``
        self._bank: np.ndarray | None = None  # (clips, bank, H, W, 3) uint8, made on first use
        self.records, self.frames, self.size, self.flip = records, frames, size, flip
        self.crop, self.crop_mouth, self.mouth_box = crop, crop_mouth, mouth_box
        self._lengths: dict[str, int] = {}

    def length(self, rec: dict) -> int:
        """A clip's frame count: the manifest's, else counted by decoding once."""
        if rec["id"] not in self._lengths:
            n = int(rec.get("frames") or 0) or len(read_video(resolve(rec, "video")))
            self._lengths[rec["id"]] = n
        return self._lengths[rec["id"]]

    def _frame_bank(self) -> np.ndarray:
        if self._bank is None:
            frames, regions = [], []
            for rec in tqdm(
                self.records, desc="frame bank", unit="clip", disable=not self.progress
            ):
                video = read_video(resolve(rec, "video"))
                pick = np.linspace(0, len(video) - 1, self.bank).round().astype(int)
                frames.append(fit_size(video[pick], self.size))
                if self.regions:
                    regions.append(self._region_boxes(rec, pick, frames[-1].shape[1]))
            self._bank = np.stack(frames)
            self._regions = np.stack(regions) if regions else None
        return self._bank

    def _region_boxes(self, rec: dict, pick: np.ndarray, size: int) -> np.ndarray:
        """(len(pick), K, 4) pixel boxes (x0, y0, x1, y1) of the picked frames' mouth and eyes."""
        track = load_track(rec)
        if not has_geometry(track):
            raise ReadtalkError(
                f"clip {rec['id']} has no SynthTalk geometry in its track: per-frame mouth and "
                "eye boxes (region_boxes=true) need SynthTalk data"
            )
        boxes = synthtalk_regions(track, size)
        return np.concatenate([boxes["mouth"], boxes["eyes"]], axis=1)[pick]

    def region_mask(self, clip: int, frame: int) -> np.ndarray:
        """(H, W) uint8 of bank frame ``frame`` of clip ``clip``: 1 inside its mouth and eye
        boxes grown by ``margin`` pixels (``regions`` only)."""
        if self._regions is None:
            raise ReadtalkError("this sampler has no per-frame regions (regions=True, a bank)")
        h, w = self._frame_bank().shape[2:4]
        out, m = np.zeros((h, w), np.uint8), self.margin
        for x0, y0, x1, y1 in self._regions[clip, frame]:
            out[max(y0 - m, 0) : y1 + m, max(x0 - m, 0) : x1 + m] = 1
        return out

    def _offsets(self, h: int, w: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Every crop offset (y0, x0) on the 32-pixel grid, and those whose crop holds the box."""
        if self.crop > min(h, w):
            raise ReadtalkError(f"crop={self.crop} is larger than the {h}x{w} frames")
        every = [
            (y, x) for y in range(0, h - self.crop + 1, 32) for x in range(0, w - self.crop + 1, 32)
        ]
        b = self.mouth_box
        by0, bx0, by1, bx1 = b[1] * h, b[0] * w, b[3] * h, b[2] * w
        mouth = [
            (y, x)
            for y, x in every
            if y <= by0 and x <= bx0 and y + self.crop >= by1 and x + self.crop >= bx1
        ]
        return every, mouth or every

    def sample(
        self, batch: int, rng: np.random.Generator, part: slice = slice(None)
    ) -> torch.Tensor:
        """The windows ``part`` (a rank's share) of a batch of ``batch`` drawn from ``rng``:
        every window is drawn, only those in ``part`` are decoded."""
        return self.sample_with_box(batch, rng, part)[0]

    def sample_with_box(
        self, batch: int, rng: np.random.Generator, part: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sample``'s windows (B, 3, F, h, w) and where ``mouth_box`` (with ``regions``: the
        frame's own mouth and eye boxes) lies in each of them (B, 1, 1, h, w: 1 inside, 0
        outside), after its crop and flip."""
        keep = range(batch)[part]
        out, boxes, n = [], [], 0
        while n < batch:
            if self.bank:  # a clip and one of its bank frames
                i, j = int(rng.integers(len(self.records))), int(rng.integers(self.bank))
                flip = self.flip and rng.uniform() < 0.5
                pick = (float(rng.uniform()), float(rng.uniform())) if self.crop else None
                if n in keep:
                    bank = self._frame_bank()
                    region = None if self._regions is None else self.region_mask(i, j)
                    self._add(bank[i, j][None], flip, pick, out, boxes, region)
                n += 1
                continue
            rec = self.records[int(rng.integers(len(self.records)))]
            length = self.length(rec)
            if length < self.frames:
                continue
            start = int(rng.integers(0, length - self.frames + 1))
            flip = self.flip and rng.uniform() < 0.5
            pick = (float(rng.uniform()), float(rng.uniform())) if self.crop else None
            if n in keep:
                video = read_video(resolve(rec, "video"), start + self.frames)[start:]
                if len(video) < self.frames:
                    raise ReadtalkError(f"clip {rec['id']} has fewer frames than its manifest says")
                self._add(fit_size(video, self.size), flip, pick, out, boxes)
            n += 1
        return torch.stack(out), torch.stack(boxes)  # (B, 3, F, h, w), (B, 1, 1, h, w)

    def _add(self, clip: np.ndarray, flip: bool, pick, out: list, boxes: list, region=None) -> None:
        """Crop (``pick``: two uniform draws, or None) and flip a window (F, H, W, 3), and append
        it and its box (``region`` (H, W), else the fixed mouth box) to ``out`` and ``boxes``."""
        if region is None:
            box = box_mask(clip.shape[1:3], self.mouth_box)  # (H, W)
        else:
            box = torch.from_numpy(region.astype(np.float32))
        if pick is not None:
            every, mouth = self._offsets(*clip.shape[1:3])
            choice = mouth if pick[0] < self.crop_mouth else every
            y0, x0 = choice[min(int(pick[1] * len(choice)), len(choice) - 1)]
            clip = clip[:, y0 : y0 + self.crop, x0 : x0 + self.crop]
            box = box[y0 : y0 + self.crop, x0 : x0 + self.crop]
        if flip:
            clip, box = clip[:, :, ::-1], box.flip(-1)
        out.append(to_tensor(np.ascontiguousarray(clip)))
        boxes.append(box[None, None])


def motion_weights(video: torch.Tensor, weight: float, scale: float, dilate: int) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, F, H, W) for (B, 3, F, H, W) videos in [-1, 1].

    A pixel's motion is its mean absolute distance (over colour) from the window's mean frame,
    grown by a ``dilate``-pixel max filter so the whole moving part (the lips around a dark
    opening) is covered; the weight is ``1 + weight * min(motion / scale, 1)``."""
    d = (video - video.mean(2, keepdim=True)).abs().mean(1, keepdim=True)
    if dilate > 1:
        k = dilate | 1
        d = torch.nn.functional.max_pool3d(d, (1, k, k), stride=1, padding=(0, k // 2, k // 2))
    return 1.0 + weight * (d / scale).clamp(max=1.0)


def box_mask(shape: torch.Size, box: tuple[float, ...]) -> torch.Tensor:
    """(H, W): 1 inside ``box`` (x0, y0, x1, y1 as fractions of the frame), 0 elsewhere."""
    h, w = shape[-2], shape[-1]
    x0, y0, x1, y1 = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1.0
    return m


def box_weights(shape: torch.Size, box: tuple[float, ...], weight: float) -> torch.Tensor:
    """Per-pixel loss weights (1, 1, 1, H, W): 1 + ``weight`` inside ``box`` (x0, y0, x1, y1 as
    fractions of the frame), 1 elsewhere."""
    return 1.0 + weight * box_mask(shape, box)[None, None, None]
