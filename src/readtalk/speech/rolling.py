"""Per-latent speech codes for the rolling schedule: each latent's code from a short Whisper
pass over the audio around it, so a live session can compute it as soon as that audio exists.

The clip schedule (``speechae.window_codes``) encodes a whole clip's audio in one 30-s Whisper
window: a code then depends on the clip it sits in, and a clip can start only when its whole
audio has arrived (2.3 s for 57 frames), and each clip costs a full 30-s encoder pass (0.24 s on
the 2-core CPU). Here the code of a latent depends on the audio around it alone:

* latent ``g`` of a video covers frames ``[8g - 7, 8g + 1)`` (latent 0: frame 0 alone, the
  VAE's rule);
* its features come from one Whisper encoder pass over the ``context`` frames (40 ms each) of
  audio that end ``lookahead`` frames after the latent's last frame, the mel of that audio
  alone and the first rows of the position table (the "sliced" use of the encoder; silence
  before the start of the speech and past its end);
* the code is the SpeechAE's encoding of the latent's frames with one frame before them
  (``F = 9``; latent 0: ``F = 1``), which for the raw SpeechAE is exactly the latent's own
  frames.

A latent's code is therefore the same wherever the latent sits in a DiT window and whether the
speech came in one piece or in samples: the latent cache (training) and the session (inference)
both call ``latent_codes``. The first frame of latent ``g`` can be shown ``(7 + lookahead) /
25`` s after its audio started plus the compute: the latency the rolling schedule is for
(docs/streaming.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLES_PER_FRAME
from readtalk.speech.speechae import window_codes

__all__ = ["SpeechWindow", "codes_for_window", "latent_codes", "latent_span"]

TEMPORAL_FACTOR = 8
FEATURES_PER_FRAME = 2  # 50 feature frames/s at 25 fps


@dataclass(frozen=True)
class SpeechWindow:
    """How a latent's speech is heard: ``context`` frames of audio per encoder pass, ending
    ``lookahead`` frames after the latent's last frame."""

    context: int = 50
    lookahead: int = 2

    def validate(self) -> None:
        need = TEMPORAL_FACTOR + 1 + self.lookahead
        if self.lookahead < 0:
            raise ReadtalkError(f"speech lookahead must be >= 0 frames, got {self.lookahead}")
        if not need <= self.context <= 750:
            raise ReadtalkError(
                f"speech context must lie in [{need}, 750] frames (the latent's 9 frames plus "
                f"the lookahead, at most Whisper's 30 s), got {self.context}"
            )

    @classmethod
    def from_meta(cls, value: dict | str | None) -> SpeechWindow | None:
        """The window a release or cache recorded, as a dict or its JSON (None: the clip
        schedule's codes)."""
        if isinstance(value, str):
            value = json.loads(value)
        if not value:
            return None
        try:
            sw = cls(**value)
        except TypeError as e:
            raise ReadtalkError(f"bad speech window {value!r}: {e}") from None
        sw.validate()
        return sw


def latent_span(g: int, temporal_factor: int = TEMPORAL_FACTOR) -> tuple[int, int]:
    """Frames ``[a, b)`` of latent ``g``: ``[0, 1)`` for latent 0, else ``[8g - 7, 8g + 1)``."""
    if g < 0:
        raise ValueError(f"latent index must be >= 0, got {g}")
    return (0, 1) if g == 0 else (temporal_factor * (g - 1) + 1, temporal_factor * g + 1)


def _audio_windows(
    audio: np.ndarray, audio_start: int, stops: Sequence[int], sw: SpeechWindow
) -> np.ndarray:
    """(n, context * 640) audio windows ending ``lookahead`` frames after each frame stop;
    ``audio`` holds samples ``[audio_start, audio_start + len)``, silence elsewhere."""
    spf = SAMPLES_PER_FRAME
    n = sw.context * spf
    out = np.zeros((len(stops), n), np.float32)
    for i, stop in enumerate(stops):
        hi = (stop + sw.lookahead) * spf
        lo = hi - n
        a, b = max(lo, audio_start), min(hi, audio_start + len(audio))
        if a < b:
            out[i, a - lo : b - lo] = audio[a - audio_start : b - audio_start]
    return out


@torch.no_grad()
def _window_features(front_end, windows: np.ndarray) -> torch.Tensor:
    """(n, 2 * context, D) features of each window on its own (the encoder sliced)."""
    encode_short = getattr(front_end, "short_features", None)
    x = torch.from_numpy(windows).to(front_end.device)
    return encode_short(x) if encode_short is not None else front_end.features(x)


@torch.no_grad()
def latent_codes(
    model,
    front_end,
    audio: np.ndarray,
    latents: Sequence[int],
    sw: SpeechWindow,
    *,
    audio_start: int = 0,
    frame_origin: int = 0,
) -> torch.Tensor:
    """Speech codes ``(1, len(latents), code_dim)`` (float32, on the SpeechAE's device) of the
    given latents (module docstring). ``audio``: 16-kHz mono samples ``[audio_start, ...)`` of
    the speech; latent ``g`` covers frames ``frame_origin + latent_span(g)`` of it (a latent
    cache's window starts at ``frame_origin``)."""
    if not latents:
        raise ValueError("no latents asked for")
    spans = [latent_span(g) for g in latents]
    stops = [frame_origin + b for _, b in spans]
    feats = _window_features(front_end, _audio_windows(audio, audio_start, stops, sw))
    per = FEATURES_PER_FRAME
    end = (sw.context - sw.lookahead) * per  # row after the latent's last frame
    device = model.feat_mean.device
    codes = []
    for i, (a, b) in enumerate(spans):
        first = a if a == 0 else a - 1  # one frame of left context (F = 9), none for latent 0
        rows = feats[i, end - (b - first) * per : end]  # (frames * 2, D)
        x = rows.reshape(1, b - first, per * rows.shape[-1]).to(device, torch.float32)
        codes.append(model.encode(x)[:, -1])  # the latent's own code: (1, A)
    return torch.stack(codes, dim=1).float()  # (1, n, A)


def codes_for_window(
    model, front_end, audio: np.ndarray, start: int, frames: int, sw: SpeechWindow | None
) -> torch.Tensor:
    """(f, A) speech codes of a latent cache's window of ``frames`` frames from ``start``: over
    the window's own audio (``sw`` None, the clip schedule; ``speechae.window_codes``), or one
    per latent (the rolling schedule)."""
    if sw is None:
        return window_codes(model, front_end, audio, start, frames)[0]
    latents = range((frames - 1) // TEMPORAL_FACTOR + 1)
    return latent_codes(model, front_end, audio, latents, sw, frame_origin=start)[0]
