"""What every stage of ``readtalk prepare`` shares: its settings (``PrepareConfig``) and the
reasons footage is dropped (``REASONS``, ``Rejected``). ``readtalk.data.prepare`` re-exports
them; ``footage`` (reading one video), ``clips`` (planning its clips) and ``prepare`` (writing
them, the whole run) use them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from readtalk.errors import ReadtalkError

# Why footage is dropped. Whole videos: unreadable, too_short, no_audio, silent, no_face, error.
# Windows of ``frames`` frames inside a usable video: every reason but unreadable and error.
REASONS = {
    "unreadable": "not a video PyAV can decode, or corrupt",
    "too_short": "shorter than one clip",
    "no_audio": "no audio stream",
    "silent": "too little speech",
    "no_face": "no face found (or lost for some frames)",
    "several_faces": "more than one face",
    "face_too_small": "the crop would be upscaled too much",
    "scene_cut": "a scene cut inside the window",
    "face_jump": "the tracked face jumped (another face, or an undetected cut)",
    "error": "an unexpected error (a bug); retried on the next run",
}


@dataclass(frozen=True)
class PrepareConfig:
    size: int = 512  # output frame size (multiple of 32)
    frames: int = 121  # frames per clip, 8k+1
    workers: int = 0  # processes (0: all cores); one video per process at a time
    detect_every: int = 5  # run the face detector every this many 25-fps frames
    detect_size: int = 480  # detector input's short side (faces below ~1/6 of it are missed)
    scan_every: int = 25  # search the whole frame this often (else only near the face)
    max_gap: int = 15  # frames without a detection a track may bridge
    margin: float = 2.0  # crop side / face box side (2.0 frames the head like SynthTalk)
    lift: float = 0.15  # crop centre above the face box centre, in face sizes
    smooth: float = 1.0  # Gaussian sigma of the crop path, seconds (0: one fixed crop per clip)
    max_upscale: float = 2.5  # reject windows whose crop would be enlarged more than this
    min_speech: float = 0.2  # reject windows with a smaller fraction of voiced frames
    cut_threshold: float = 0.1  # thumbnail change that counts as a scene cut
    test_fraction: float = 0.1  # of identities
    crf: int = 18

    def validate(self) -> None:
        if self.size < 64 or self.size % 32:
            raise ReadtalkError(f"--size must be a multiple of 32 and >= 64, got {self.size}")
        if self.frames < 9 or (self.frames - 1) % 8:
            k = max(1, (self.frames - 1) // 8)
            raise ReadtalkError(
                f"--frames must be 8k+1 and >= 9 (e.g. {8 * k + 1} or {8 * k + 9}), "
                f"got {self.frames}"
            )
        if self.workers < 0:
            raise ReadtalkError(f"--workers must be >= 0, got {self.workers}")
        if self.detect_every < 1 or self.max_gap < self.detect_every or self.scan_every < 1:
            raise ReadtalkError("need detect_every >= 1, max_gap >= detect_every, scan_every >= 1")
        if self.detect_size < 80:
            raise ReadtalkError(f"detect_size must be >= 80, got {self.detect_size}")
        if self.margin < 1 or self.smooth < 0 or self.max_upscale <= 0:
            raise ReadtalkError("margin must be >= 1, smooth >= 0 and max_upscale > 0")
        if not 0 <= self.min_speech <= 1 or not 0 <= self.test_fraction < 1:
            raise ReadtalkError("min_speech must be in [0, 1] and test_fraction in [0, 1)")

    def settings(self) -> dict:
        """What changes the output (everything but the number of workers)."""
        d = asdict(self)
        del d["workers"]
        return d


class Rejected(Exception):
    """A whole video is dropped for ``reason`` (a key of REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail
