"""Generation settings: one typed record of how a video is sampled, with the model's defaults.

Resolution happens once: the code defaults below, then the model's own defaults (the DiT
release's ``diffusion`` entries, then the model folder's ``pipeline.json``), then what the
caller sets (``GenerationSettings.from_model(defaults).override(steps=4)``). ``None`` in an
override means "keep the model's value".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from readtalk.diffusion.flow import DEFAULT_SHIFT, DEFAULT_STEPS
from readtalk.diffusion.sampling import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_GAMMA,
    GUIDANCE_MODES,
    Guidance,
)
from readtalk.errors import ReadtalkError

# Latents of the previous clip that a clip's decoding continues from. On the demo model (a
# held-out 60-s video, 8 steps) 8 latents make a clip start change the picture no more than
# any other latent start does (seam ratio 0.98, other latent starts 0.94); 4 leave 1.38, 2
# leave 4.3 (docs/dit.md). The exact reach is the VAE's ``decoder_context`` (17 for res-small).
DECODE_CONTEXT = 8
# Frames over which a factorised VAE spreads the step into each 8-frame group
# (``vae.factorised.blend_group_start``). On the demo model (2 held-out 60-s videos, 4 steps)
# 2 frames take the seam ratio from 2.77 to 0.91 for 0.012 of mouth_corr (0.785 -> 0.773);
# 3 frames to 0.67 for 0.018 (docs/streaming.md); 0 shows the groups as decoded.
GROUP_BLEND = 2
DEFAULT_SIZE = 256  # frame size of a model that records none
MOTION_FROM = ("frames", "latents")
SCHEDULES = ("clips", "rolling")


@dataclass(frozen=True)
class GenerationSettings:
    """How a video is generated (``Pipeline``, ``Session``, ``readtalk generate``).

    ``steps`` Euler steps, ``shift`` timestep shift; ``guidance``: ``"split"`` (Split-CFG:
    reference scale ``alpha``, audio scale ``beta``), ``"joint"`` (scale ``gamma``) or
    ``"none"``; clips of ``clip_frames`` (8k+1) frames whose first ``motion_latents`` latents
    continue the previous clip (ANS; ``ans=False``: plain chunking, the ablation, same timeline
    and compute). ``motion_from``: ``"frames"`` (a later clip's motion latents are the previous
    clip's last decoded frames encoded again) or ``"latents"`` (its last latents reused as they
    are; the ablation, a jump at every clip start). ``decode_context``: latents of the previous
    clip the causal VAE decoder continues from (0: every clip decoded on its own, the
    ablation). ``group_blend``: frames over which a factorised VAE spreads the step into each
    8-frame group (0: as decoded). ``seed``: the noise of every clip comes from one generator
    seeded with it. ``schedule``: ``"clips"`` (the above) or ``"rolling"`` (one 8-frame latent
    per DiT window, after ``context_latents`` it has made; ``diffusion.next_rolling``, for a
    model trained for it: docs/streaming.md); the clip settings are then unused.
    ``motion_floor``: the least noise level of the motion latents while the new ones are
    noisier (``diffusion.ans_sample``; 0: READ's one step ahead). ``gate_db``: the speech the
    model hears is silenced in pauses, frames more than this many dB below the speech's loud
    level (``speech.gate``: a recording's room noise no longer moves the mouth; 0: no gate;
    the video keeps the speech as given).
    """

    steps: int = DEFAULT_STEPS
    shift: float = DEFAULT_SHIFT
    guidance: str = "split"
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    gamma: float = DEFAULT_GAMMA
    clip_frames: int = 121
    motion_latents: int = 1
    motion_from: str = "frames"
    decode_context: int = DECODE_CONTEXT
    group_blend: int = GROUP_BLEND
    seed: int = 0
    ans: bool = True
    schedule: str = "clips"
    context_latents: int = 2
    motion_floor: float = 0.0
    gate_db: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ReadtalkError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.group_blend < 8:
            raise ReadtalkError(f"group blend must lie in [0, 7] frames, got {self.group_blend}")
        if self.decode_context < 0:
            raise ReadtalkError(f"decode context must be >= 0, got {self.decode_context}")
        if self.motion_from not in MOTION_FROM:
            raise ReadtalkError(
                f"motion_from must be 'frames' or 'latents', got {self.motion_from!r}"
            )
        if self.guidance not in GUIDANCE_MODES:
            raise ReadtalkError(
                f"guidance must be one of {', '.join(GUIDANCE_MODES)}, got {self.guidance!r}"
            )
        if self.motion_latents < 0:
            raise ReadtalkError(f"motion latents must be >= 0, got {self.motion_latents}")
        if self.schedule not in SCHEDULES:
            raise ReadtalkError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if not 0.0 <= self.motion_floor < 1.0:
            raise ReadtalkError(f"motion floor must lie in [0, 1), got {self.motion_floor}")
        if self.gate_db < 0:
            raise ReadtalkError(f"gate range must be >= 0 dB (0: no gate), got {self.gate_db}")
        if self.context_latents < 1:
            raise ReadtalkError(f"context latents must be >= 1, got {self.context_latents}")
        self.guidance_config()  # finite scales

    # ---- building

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_model(cls, defaults: Mapping[str, Any] | None = None) -> GenerationSettings:
        """The code defaults with a model's defaults on top (keys that are not settings, such
        as ``size``, are ignored here)."""
        return cls().override(**{k: v for k, v in (defaults or {}).items() if k in cls.fields()})

    def override(self, **values: Any) -> GenerationSettings:
        """A copy with ``values`` set (``None``: keep); unknown names are a one-line error."""
        unknown = sorted(set(values) - set(self.fields()))
        if unknown:
            raise ReadtalkError(
                f"unknown generation setting(s) {', '.join(unknown)} "
                f"(known: {', '.join(self.fields())})"
            )
        kept = {k: v for k, v in values.items() if v is not None}
        types = {f.name: f.type for f in dataclasses.fields(self)}
        try:
            coerced = {k: _coerce(v, types[k], k) for k, v in kept.items()}
        except (TypeError, ValueError) as e:
            raise ReadtalkError(f"bad generation setting: {e}") from None
        return dataclasses.replace(self, **coerced)

    # ---- derived

    def guidance_config(self) -> Guidance:
        return Guidance(mode=self.guidance, alpha=self.alpha, beta=self.beta, gamma=self.gamma)  # type: ignore[arg-type]

    def clip_latents(self, temporal_factor: int) -> int:
        """Latent frames per clip; a one-line error unless ``clip_frames`` is tf*k + 1, k >= 1."""
        cf, tf = self.clip_frames, temporal_factor
        if cf < 1 + tf or (cf - 1) % tf:
            raise ReadtalkError(f"clip frames must be {tf}k+1 with k >= 1 (e.g. 121), got {cf}")
        latents = 1 + (cf - 1) // tf
        if self.motion_latents >= latents:
            raise ReadtalkError(
                f"motion latents must lie in [0, {latents - 1}] for clips of {cf} frames, got "
                f"{self.motion_latents}"
            )
        return latents

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: str, name: str) -> Any:
    if tp == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
        return value
    if tp == "int":
        if isinstance(value, bool) or float(value) != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if tp == "float":
        return float(value)
    return str(value)


# the keys of a model's defaults (pipeline.json, the DiT release) that readtalk reads: the
# frame size, the generation settings a model may fix (the seed and the ANS switch are the
# caller's) and what it knows of portraits
MODEL_DEFAULT_KEYS = (
    "size",
    *(k for k in GenerationSettings.fields() if k not in ("seed", "ans")),
    "portrait",  # the training portraits' statistics (Pipeline.portrait_fit)
)
