"""A noise gate for the speech the model hears: a recording's pauses made as silent as the
training speech's.

SynthTalk's speech is espeak-ng's, whose pauses are digital silence; a real recording's pauses
hold room noise, breaths and clicks. The rolling DiT hears each latent's own 2-s window, and in
a pause that window holds only the faint sound, which opens the mouth: on a real conversation
the shipped model's mouth was open on a third of the frames of its pauses (docs/results.md,
section 6, "The rolling DiT"), and on none when the same pauses were digital silence.

``NoiseGate`` silences what the speech front end hears in pauses, per 40-ms video frame
(``SAMPLES_PER_FRAME`` samples) and causally, so a live session gates as it goes and a chunked
stream is gated exactly as the whole recording:

* a frame is **loud** when its RMS level is within ``range_db`` of the speech's loud level:
  the loudest frame so far, falling by ``release_db`` per second (a speaker who turns quieter
  is followed; one loud cough does not gate the rest for long), and ``floor_db + range_db``
  before anything louder was heard (so a recording's first pause is gated too);
* the gate is open on a loud frame (its onset passes whole) and for ``hold_s`` after it (a stop
  consonant's closure, a short breath between words stay as recorded); after that the frame
  fades to silence over one frame (no click for the front end to hear) and stays silent until
  the next loud frame.

Only the model's input is gated: the video keeps the speech as it was given. Digital silence
and espeak-ng's pauses pass unchanged up to their own quiet tails (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from readtalk.errors import ReadtalkError
from readtalk.media import FPS, SAMPLES_PER_FRAME

SILENT_DB = -100.0  # the level given to a frame of digital silence


@dataclass(frozen=True)
class GateConfig:
    """``range_db``: frames quieter than the loud level by more than this are pauses (0:
    no gate). ``floor_db``: before any speech, frames above this dBFS level count as loud.
    ``hold_s``: how long the gate stays open after a loud frame. ``release_db``: how fast the
    loud level falls, dB per second."""

    range_db: float = 30.0
    floor_db: float = -50.0
    hold_s: float = 0.24
    release_db: float = 1.0

    def __post_init__(self) -> None:
        if self.range_db < 0 or self.hold_s < 0 or self.release_db < 0:
            raise ReadtalkError(
                f"gate range, hold and release must be >= 0, got {self.range_db} dB, "
                f"{self.hold_s} s, {self.release_db} dB/s"
            )

    @property
    def enabled(self) -> bool:
        return self.range_db > 0


def frame_levels(x: np.ndarray) -> np.ndarray:
    """(F,) RMS level in dBFS of each whole ``SAMPLES_PER_FRAME``-sample frame of ``x``."""
    f = len(x) // SAMPLES_PER_FRAME
    frames = np.asarray(x[: f * SAMPLES_PER_FRAME], np.float64).reshape(f, SAMPLES_PER_FRAME)
    rms = np.sqrt((frames**2).mean(axis=1))
    return 20.0 * np.log10(np.maximum(rms, 10 ** (SILENT_DB / 20)))


class NoiseGate:
    """``process(x)``: speech in pieces of any length -> the gated speech of the whole frames
    completed so far (a frame's samples are held until it is complete); ``flush()``: the
    gated rest. Concatenated, the outputs are the gated input, however it was split."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self._hold = int(round(self.config.hold_s * FPS))
        self._fall = self.config.release_db / FPS  # dB per frame
        # the loud level (dBFS): until louder speech is heard, ``floor_db`` above the range
        self._loud = self.config.floor_db + self.config.range_db
        self._since = self._hold + 1  # frames since the last loud frame
        self._open = False
        self._rest = np.zeros(0, np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._rest, np.asarray(x, np.float32).reshape(-1)])
        whole = len(x) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME
        self._rest = x[whole:].copy()
        if not self.config.enabled:
            return x[:whole]
        return self._gate(x[:whole])

    def flush(self) -> np.ndarray:
        """The held samples of an incomplete last frame, gated as a whole frame would be."""
        rest, self._rest = self._rest, np.zeros(0, np.float32)
        if not self.config.enabled or not len(rest):
            return rest
        padded = np.concatenate([rest, np.zeros(SAMPLES_PER_FRAME - len(rest), np.float32)])
        return self._gate(padded)[: len(rest)]

    def _gate(self, x: np.ndarray) -> np.ndarray:
        out = x.reshape(-1, SAMPLES_PER_FRAME).copy()
        fade = np.linspace(1.0, 0.0, SAMPLES_PER_FRAME, dtype=np.float32)
        for i, level in enumerate(frame_levels(x)):
            self._loud = max(self._loud - self._fall, level)
            self._since = 0 if level >= self._loud - self.config.range_db else self._since + 1
            if self._since <= self._hold:
                self._open = True
            elif self._open:  # the first frame past the hold fades out
                out[i] *= fade
                self._open = False
            else:
                out[i] = 0.0
        return out.reshape(-1)
