"""readtalk: real-time audio-driven talking-head video generation (READ, arXiv 2508.03457).

    from readtalk import Pipeline
    pipe = Pipeline.from_pretrained()          # the shipped demo model
    pipe.generate_to_file("face.png", "speech.wav", "out.mp4")
    s = pipe.stream("face.png", seed=0)        # live: s.push(piece) -> frames, s.flush()

``Pipeline``, ``Session`` and ``GenerationSettings`` are imported on first use (PEP 562), so
that ``import readtalk`` (and ``readtalk --help``) does not load torch.
"""

from readtalk.errors import ReadtalkError

__version__ = "0.1.0"
__all__ = ["GenerationSettings", "Pipeline", "ReadtalkError", "Session", "__version__"]

_LAZY = {
    "Pipeline": "readtalk.pipeline",
    "Session": "readtalk.session",
    "GenerationSettings": "readtalk.settings",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'readtalk' has no attribute {name!r}")
