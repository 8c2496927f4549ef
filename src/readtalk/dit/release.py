"""DiT release files: the trained A2V-DiT with what sampling needs beside its weights.

safetensors with metadata ``kind = "readtalk.dit"``, ``config`` (``DiTConfig`` JSON),
``latent_mean`` / ``latent_std`` (JSON lists, one value per latent channel: the DiT works on
VAE latents normalised per channel, ``(z - latent_mean) / latent_std``; without them the VAE's
own ``normalize`` is used) and ``diffusion`` (JSON, e.g. ``{"shift": 1.0, "steps": 8,
"motion_latents": 1, "clip_frames": 121, "size": 256}``), whose entries are the model's
sampling defaults. Other JSON entries (which VAE and SpeechAE the DiT was trained with) come
back as ``DiTRelease.extra``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from readtalk.dit.model import A2VDiT, DiTConfig
from readtalk.errors import ReadtalkError
from readtalk.release import load_release, release_path, save_release

DIT_KIND = "readtalk.dit"

__all__ = ["DIT_KIND", "DiTRelease", "load_dit_release", "save_dit_release"]


def save_dit_release(
    path: str | os.PathLike,
    dit: torch.nn.Module,
    *,
    latent_mean: Any | None = None,
    latent_std: Any | None = None,
    diffusion: dict | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a DiT release file (module docstring). ``latent_mean`` / ``latent_std`` default to
    0 / 1 per channel (the VAE's latents are used as they are); ``extra`` entries are stored as
    JSON metadata beside them (e.g. which VAE and SpeechAE the DiT was trained with)."""
    c = dit.cfg.latent_channels
    mean = [0.0] * c if latent_mean is None else [float(v) for v in torch.as_tensor(latent_mean)]
    std = [1.0] * c if latent_std is None else [float(v) for v in torch.as_tensor(latent_std)]
    if len(mean) != c or len(std) != c:
        raise ReadtalkError(f"latent statistics need {c} values per channel")
    meta = {
        "latent_mean": json.dumps(mean),
        "latent_std": json.dumps(std),
        "diffusion": json.dumps(diffusion or {}),
        **{k: json.dumps(v) for k, v in (extra or {}).items()},
    }
    return save_release(path, dit.state_dict(), DIT_KIND, dit.cfg.to_json(), meta)


@dataclass
class DiTRelease:
    model: A2VDiT
    latent_mean: Tensor | None  # (C,) or None: use the VAE's normalisation
    latent_std: Tensor | None
    diffusion: dict
    extra: dict  # the other JSON metadata (e.g. "vae", "speechae": {path, sha256})


def load_dit_release(path: str | os.PathLike) -> DiTRelease:
    """Read a DiT release file: the model (eval mode, CPU float32) and its metadata."""
    p = release_path(path, "dit.safetensors")
    tensors, meta = load_release(p, DIT_KIND)
    try:
        cfg = DiTConfig.from_json(meta["config"])
        mean = json.loads(meta["latent_mean"]) if "latent_mean" in meta else None
        std = json.loads(meta["latent_std"]) if "latent_std" in meta else None
        diffusion = json.loads(meta.get("diffusion") or "{}")
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise ReadtalkError(f"{p}: unreadable DiT metadata ({e})") from None
    with torch.device("meta"):
        model = A2VDiT(cfg)
    try:
        model.load_state_dict(tensors, assign=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ReadtalkError(f"{p}: weights do not match its DiT config ({first})") from None
    c = cfg.latent_channels
    for name, v in (("latent_mean", mean), ("latent_std", std)):
        if v is not None and len(v) != c:
            raise ReadtalkError(f"{p}: {name} has {len(v)} values for {c} latent channels")
    if std is not None and min(std) <= 0:
        raise ReadtalkError(f"{p}: latent_std must be positive")
    return DiTRelease(
        model.eval(),
        None if mean is None else torch.tensor(mean, dtype=torch.float32),
        None if std is None else torch.tensor(std, dtype=torch.float32),
        diffusion if isinstance(diffusion, dict) else {},
        _extra_meta(meta),
    )


def _extra_meta(meta: dict[str, str]) -> dict:
    known = {"kind", "config", "latent_mean", "latent_std", "diffusion", "format"}
    out = {}
    for k, v in meta.items():
        if k not in known:
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
    return out
