"""readtalk.dit: the audio-to-video diffusion transformer (A2V-DiT)."""

from readtalk.dit.model import DIT_SIZES, A2VDiT, DiTConfig, num_params

__all__ = ["DIT_SIZES", "A2VDiT", "DiTConfig", "num_params"]
