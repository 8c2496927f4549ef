"""SynthTalk: synthetic talking heads with exact ground truth (speech, phonemes, mouth, pose)."""

from readtalk.data.synthtalk.dataset import SynthConfig, generate, reference_portrait
from readtalk.data.synthtalk.mouth_reader import MouthReading, read_mouth, read_mouth_track

__all__ = [
    "MouthReading",
    "SynthConfig",
    "generate",
    "read_mouth",
    "read_mouth_track",
    "reference_portrait",
]
