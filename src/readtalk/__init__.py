"""readtalk: real-time audio-driven talking-head video generation (READ, arXiv 2508.03457)."""

from readtalk.errors import ReadtalkError

__version__ = "0.1.0"
__all__ = ["ReadtalkError", "__version__"]
