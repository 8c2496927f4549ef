"""Contact sheets of a dataset: each clip's reference portrait, then evenly spaced frames."""

from __future__ import annotations

import numpy as np

from readtalk.data.manifest import resolve
from readtalk.media import contact_sheet, read_image, read_video


def dataset_sheet(records: list[dict], per_clip: int) -> np.ndarray:
    """Reference portrait then ``per_clip`` evenly spaced frames, one row per clip."""
    tiles = []
    for rec in records:
        video = read_video(resolve(rec, "video"))
        step = (len(video) - 1) / max(1, per_clip - 1)
        tiles.append(read_image(resolve(rec, "ref")))
        tiles.extend(video[int(round(k * step))] for k in range(per_clip))
    return contact_sheet(tiles, cols=per_clip + 1)
