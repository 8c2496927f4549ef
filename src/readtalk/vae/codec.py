"""What every readtalk VAE shares: the ``LatentCodec`` base (sizes and latent normalisation),
the training output and KL loss, input checks, and checking, assigning and writing weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from readtalk.errors import ReadtalkError

HALF = (torch.float16, torch.bfloat16)  # stored-precision dtypes loaded as float32 by default
READTALK_FORMAT = "readtalk-vae/1"  # the metadata format of a VideoVAE checkpoint


class VAEOutput(NamedTuple):
    """What ``VideoVAE.forward`` returns for training: reconstruction and posterior."""

    recon: Tensor  # (B, 3, F, H, W), not clamped
    latent: Tensor  # (B, C, f, h, w), the sample (or mean) that was decoded
    mean: Tensor  # (B, C, f, h, w)
    logvar: Tensor  # (B, C, f, h, w)


@dataclass(frozen=True)
class LatentScaling:
    """Per-channel latent statistics: ``normalized = (z - mean) * factor / std``."""

    mean: Tensor  # (C,)
    std: Tensor  # (C,)
    factor: float


def kl_loss(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, 1)) averaged over all latent elements (scalar)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


class LatentCodec(nn.Module):
    """What every readtalk VAE shares: sizes from ``self.config`` and latent normalisation
    from the per-channel statistics a subclass returns in ``_latent_stats``."""

    config: Any

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_factor

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, f, h, w)`` for a clip of ``frames x height x width`` (raises if invalid)."""
        return self.config.latent_shape(frames, height, width)

    def _latent_stats(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def reference(self, image: Tensor) -> Any:
        """A portrait (B, 3, H, W) in [-1, 1] prepared for decoding with it (``decode`` and
        ``iter_decode``'s ``reference=``); None for a VAE that takes nothing from the portrait.
        Only a factorised VAE with a portrait refiner does (``FactorisedVAE.reference``)."""
        return None

    @property
    def scaling(self) -> LatentScaling:
        mean, std = self._latent_stats()
        return LatentScaling(mean=mean, std=std, factor=self.config.scaling_factor)

    def normalize(self, latent: Tensor) -> Tensor:
        """Latent -> roughly unit-variance diffusion space: ``(z - mean) * factor / std``.

        This is what the LTX pipeline feeds its transformer; for a VAE without statistics
        (mean 0, std 1, factor 1) it is the identity.
        """
        mean, std = (_channel_view(x, latent) for x in self._latent_stats())
        return (latent - mean) * self.config.scaling_factor / std

    def denormalize(self, latent: Tensor) -> Tensor:
        """Inverse of ``normalize``: diffusion space -> what ``decode`` takes."""
        mean, std = (_channel_view(x, latent) for x in self._latent_stats())
        return latent * std / self.config.scaling_factor + mean


def check_video_shape(video: Tensor) -> None:
    if not isinstance(video, Tensor) or video.dim() != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ReadtalkError(f"video must be a (B, 3, F, H, W) tensor, got {shape}")


def check_video_values(video: Tensor) -> None:
    """Finite, and in [-1, 1] give or take the overshoot of a decoder's output."""
    _check_values(video, "video")
    lo, hi = video.min().item(), video.max().item()
    if lo < -1.5 or hi > 1.5:
        raise ReadtalkError(
            f"video values must lie in [-1, 1] (pixels / 127.5 - 1); found {lo:g}..{hi:g}"
        )


def set_channel_stats(
    dst_mean: Tensor, dst_std: Tensor, mean: Tensor, std: Tensor, what: str
) -> None:
    """Copy per-channel statistics into two buffers after checking count, finiteness, std > 0."""
    c = dst_mean.numel()
    mean, std = torch.as_tensor(mean).flatten(), torch.as_tensor(std).flatten()
    if mean.numel() != c or std.numel() != c:
        raise ReadtalkError(f"{what} statistics need {c} values per channel")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ReadtalkError(f"{what} statistics must be finite with std > 0")
    dst_mean.copy_(mean)
    dst_std.copy_(std)


def assign_state(
    module: nn.Module,
    state: dict[str, Tensor],
    source: str,
    layout: str,
    dtype: torch.dtype | None,
) -> None:
    """Check ``state`` against a meta-device ``module``'s every name and shape (one line naming
    what differs, against ``layout``), cast it (``dtype``; None: half precision to float32, as
    ``readtalk export`` stores it) and assign it."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of other shape (e.g. {shapes[0]})")
        raise ReadtalkError(f"{source} does not match the {layout} layout: {'; '.join(parts)}")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    else:
        state = {k: v.float() if v.dtype in HALF else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)


def save_atomic(path: Path, state: dict[str, Tensor], meta: dict[str, str]) -> Path:
    """Write ``state`` as one safetensors file with ``meta``; it appears only once complete."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_values(x: Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ReadtalkError(f"{what} contains NaN or infinite values")


def _channel_view(stat: Tensor, like: Tensor) -> Tensor:
    return stat.to(device=like.device, dtype=like.dtype).view(1, -1, *([1] * (like.dim() - 2)))
