"""The temporal VAE: a thin, checked interface over diffusers' ``AutoencoderKLLTXVideo``.

READ compresses video with the pretrained LTX-Video VAE: 32x down-sampling in each spatial axis,
8x in time, 128 latent channels. The encoder is causal in time and encodes the first frame on
its own, so a clip has ``F = 8k + 1`` frames and ``f = 1 + (F - 1) / 8`` latent frames
(121 frames -> 16 latent frames; 512x512 -> 16x16 tokens per latent frame).

Conventions (everything in this module):

* video  ``(B, 3, F, H, W)``, RGB in ``[-1, 1]``; ``F = 8k + 1``; ``H, W`` multiples of 32
* latent ``(B, C, f, h, w)``; ``f = 1 + (F - 1) / 8``, ``h = H / 32``, ``w = W / 32``

Named sizes live in ``VAE_PRESETS`` (``debug`` for tests, ``small``/``base`` for CPU training,
``ltx`` for the official LTX-Video 0.9.0 weights). Our own checkpoints are single safetensors
files that carry their ``VAEConfig`` in the metadata (``VideoVAE.save`` / ``VideoVAE.load``);
pretrained LTX weights come in through ``VideoVAE.from_pretrained`` (a diffusers folder or an
original LTX-Video single file), entirely offline.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import AutoencoderKLLTXVideo
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from readtalk.errors import ReadtalkError
from readtalk.vae.frameconv import use_frame_path

HALF = (torch.float16, torch.bfloat16)  # stored-precision dtypes loaded as float32 by default

# --------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of one temporal VAE (the ``AutoencoderKLLTXVideo`` arguments that matter).

    Encoder tuples run from pixels to latents; the decoder tuples use the same (encoder) order,
    as diffusers does, and default to the encoder's. ``layers_per_block`` has one entry per block
    plus one for the mid block. Each ``True`` in ``spatio_temporal_scaling`` halves time, height
    and width, so the compression is ``patch_size * 2**n`` in space and ``2**n`` in time.

    ``decoder_causal`` matters for long videos: a causal decoder only looks back, so decoding in
    pieces needs context on the left only (see ``VideoVAE.iter_decode``). The official LTX
    decoder is not causal; our trainable presets are.
    """

    name: str
    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: tuple[int, ...]
    spatio_temporal_scaling: tuple[bool, ...]
    decoder_block_out_channels: tuple[int, ...] | None = None
    decoder_layers_per_block: tuple[int, ...] | None = None
    decoder_spatio_temporal_scaling: tuple[bool, ...] | None = None
    patch_size: int = 4
    decoder_causal: bool = True
    resnet_norm_eps: float = 1e-6
    scaling_factor: float = 1.0
    # Residual down/up-sampling (the LTX-Video 0.9.5 blocks; "residual autoencoding" of DC-AE,
    # arXiv 2410.10733): every 2x2x2 resampling adds a parameter-free space-to-channel (or
    # channel-to-space) shortcut, so the network learns a residual on top of a lossless
    # reshuffle. High-compression autoencoders train far faster this way (docs/stage1.md).
    # Then ``block_out_channels`` has one more entry than there are blocks (the first is the
    # width after the input convolution), every block resamples, the decoder's widths halve
    # from one block to the next (towards the pixels), and an encoder width w_i must divide
    # 8 w_(i-1) and be a multiple of 8.
    residual: bool = False

    def __post_init__(self) -> None:
        # Canonical form: decoder fields equal to the encoder's are stored as None, so that
        # dataclasses.replace(preset, block_out_channels=...) changes both halves and equal
        # networks compare equal however they were spelled.
        for field in ("block_out_channels", "layers_per_block", "spatio_temporal_scaling"):
            enc = tuple(getattr(self, field))
            object.__setattr__(self, field, enc)
            dec = getattr(self, "decoder_" + field)
            dec = None if dec is None or tuple(dec) == enc else tuple(dec)
            object.__setattr__(self, "decoder_" + field, dec)
        n, nd = self.num_blocks, len(self.decoder_channels)
        bad = None
        if self.residual:
            bad = self._residual_problem()
        if bad:
            pass
        elif self.latent_channels < 1 or min(self.block_out_channels + self.decoder_channels) < 1:
            bad = "channel counts must be positive"
        elif len(self.layers_per_block) != n + 1 or len(self.decoder_layers) != nd + 1:
            bad = "layers_per_block needs one entry per block plus one for the mid block"
        elif len(self.spatio_temporal_scaling) != n or len(self.decoder_scaling) != nd:
            bad = "spatio_temporal_scaling needs one entry per block"
        elif sum(self.spatio_temporal_scaling) != sum(self.decoder_scaling):
            bad = "encoder and decoder must scale by the same factor"
        elif min(self.layers_per_block + self.decoder_layers) < 0:
            bad = "layer counts must not be negative"
        elif self.patch_size < 1:
            bad = "patch_size must be positive"
        if bad:
            raise ReadtalkError(f"bad VAE config {self.name!r}: {bad}")

    def _residual_problem(self) -> str | None:
        enc, dec = self.block_out_channels, self.decoder_channels
        if self.decoder_block_out_channels is None:
            return "a residual VAE needs decoder_block_out_channels (one entry per block)"
        if not all(self.spatio_temporal_scaling) or not all(self.decoder_scaling):
            return "every block of a residual VAE must resample (spatio_temporal_scaling all True)"
        for a, b in itertools.pairwise(enc):
            if b % 8 or (8 * a) % b:
                return f"residual down-sampling {a} -> {b} channels: need b % 8 == 0, 8a % b == 0"
        for a, b in itertools.pairwise(dec):
            if b != 2 * a:
                return f"residual decoder widths must double per block, got {list(dec)}"
        return None

    @property
    def num_blocks(self) -> int:
        """Encoder blocks (a residual layout lists the input width first)."""
        return len(self.block_out_channels) - (1 if self.residual else 0)

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        """``decoder_block_out_channels``, resolved (encoder order, like diffusers)."""
        return self.decoder_block_out_channels or self.block_out_channels

    @property
    def decoder_layers(self) -> tuple[int, ...]:
        return self.decoder_layers_per_block or self.layers_per_block

    @property
    def decoder_scaling(self) -> tuple[bool, ...]:
        return self.decoder_spatio_temporal_scaling or self.spatio_temporal_scaling

    # ---- derived sizes

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent token along height and width (32 for LTX)."""
        return self.patch_size * 2 ** sum(self.spatio_temporal_scaling)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first one (8 for LTX)."""
        return 2 ** sum(self.spatio_temporal_scaling)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, f, h, w)`` of the latent of a ``frames x height x width`` clip (checked)."""
        _check_frames_and_size(frames, height, width, self.temporal_factor, self.spatial_factor)
        t, s = self.temporal_factor, self.spatial_factor
        return (self.latent_channels, 1 + (frames - 1) // t, height // s, width // s)

    def frames_for(self, latent_frames: int) -> int:
        """Video frames decoded from ``latent_frames`` latent frames (``1 + 8 (f - 1)``)."""
        return 1 + self.temporal_factor * (latent_frames - 1)

    @property
    def decoder_context(self) -> int:
        """Latent frames of context that make a decoded piece exact (per side; left only if causal).

        A kernel-3 convolution reaches 2 frames back (causal) or 1 frame each way at its own
        frame rate; after each temporal up-sampling a frame is half a coarser frame. Summing the
        reach of every convolution bounds how far a boundary's padding can travel.
        """
        step = 2 if self.decoder_causal else 1
        chans = self.decoder_channels[::-1]
        layers = self.decoder_layers[::-1]
        scaling = self.decoder_scaling[::-1]
        rate = 1  # frames per latent frame at the current depth
        reach = step * (1 + 2 * layers[0])  # conv_in + mid block
        ch = chans[0]
        for i, out in enumerate(chans):
            if out != ch:  # channel-changing resnet in front of the up-sampler
                reach += 2 * step / rate
            ch = out
            if scaling[i]:
                reach += step / rate
                rate *= 2
            reach += 2 * layers[i + 1] * step / rate
        reach += step / rate  # conv_out
        return math.ceil(reach)

    @property
    def encoder_context(self) -> int:
        """Latent frames of left context that make an encoded piece exact (encoder is causal)."""
        rate = self.temporal_factor  # input frames per latent frame at the current depth
        reach = 2 / rate  # conv_in
        n = self.num_blocks
        chans = self.block_out_channels
        ch = chans[0]
        for i in range(n):
            out = chans[min(i + 1, len(chans) - 1)]
            reach += 4 * self.layers_per_block[i] / rate
            if self.spatio_temporal_scaling[i]:
                reach += 2 / rate
                rate //= 2
            if out != ch:
                reach += 4 / rate
            ch = out
        reach += 4 * self.layers_per_block[-1] / rate + 2 / rate  # mid block + conv_out
        return math.ceil(reach)

    # ---- (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every field spelled out (decoder fields resolved)."""
        d = dataclasses.asdict(self)
        d.update(
            decoder_block_out_channels=self.decoder_channels,
            decoder_layers_per_block=self.decoder_layers,
            decoder_spatio_temporal_scaling=self.decoder_scaling,
        )
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ReadtalkError(f"unknown VAE config field(s): {', '.join(unknown)}")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except TypeError as e:
            raise ReadtalkError(f"incomplete VAE config: {e}") from None

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AutoencoderKLLTXVideo`` (the LTX 0.9.0 block design, or the
        0.9.5 residual resampling blocks without the decoder's timestep/noise)."""
        n, nd = self.num_blocks, len(self.decoder_channels)
        r = self.residual
        return dict(
            in_channels=3,
            out_channels=3,
            latent_channels=self.latent_channels,
            block_out_channels=self.block_out_channels,
            down_block_types=("LTXVideo095DownBlock3D" if r else "LTXVideoDownBlock3D",) * n,
            decoder_block_out_channels=self.decoder_channels,
            layers_per_block=self.layers_per_block,
            decoder_layers_per_block=self.decoder_layers,
            spatio_temporal_scaling=self.spatio_temporal_scaling,
            decoder_spatio_temporal_scaling=self.decoder_scaling,
            decoder_inject_noise=(False,) * (nd + 1),
            downsample_type=("spatiotemporal" if r else "conv",) * n,
            upsample_residual=(r,) * nd,
            upsample_factor=(2 if r else 1,) * nd,
            timestep_conditioning=False,
            patch_size=self.patch_size,
            patch_size_t=1,
            resnet_norm_eps=self.resnet_norm_eps,
            scaling_factor=self.scaling_factor,
            encoder_causal=True,
            decoder_causal=self.decoder_causal,
        )

    @classmethod
    def from_diffusers(cls, config: dict[str, Any], name: str = "custom") -> VAEConfig:
        """Read a diffusers ``config.json`` of ``AutoencoderKLLTXVideo``.

        Only the LTX-Video 0.9.0 design is supported: the 0.9.1+ decoders take a timestep and
        inject noise (so decoding is random), and 0.9.5+ encoders use other down blocks.
        """
        defaults = {
            k: v.default
            for k, v in inspect.signature(AutoencoderKLLTXVideo.__init__).parameters.items()
            if v.default is not inspect.Parameter.empty
        }
        c = {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}
        fixed = {
            "in_channels": 3,
            "out_channels": 3,
            "timestep_conditioning": False,
            "patch_size_t": 1,
            "encoder_causal": True,
        }
        for key, want in fixed.items():
            if c.get(key) != want:
                raise ReadtalkError(
                    f"unsupported LTX VAE config: {key}={c.get(key)!r} (readtalk runs the "
                    "LTX-Video 0.9.0 design; 0.9.1+ VAEs are not supported)"
                )
        if any(c.get("decoder_inject_noise") or ()) or any(c.get("upsample_residual") or ()):
            raise ReadtalkError(
                "unsupported LTX VAE config: noise injection / residual up-sampling "
                "(an LTX-Video 0.9.1+ decoder; readtalk runs the 0.9.0 design)"
            )
        if set(c.get("down_block_types") or ()) - {"LTXVideoDownBlock3D"}:
            raise ReadtalkError(
                "unsupported LTX VAE config: down_block_types "
                f"{list(c['down_block_types'])} (an LTX-Video 0.9.5+ encoder)"
            )
        if any(f != 1 for f in c.get("upsample_factor") or ()):
            raise ReadtalkError("unsupported LTX VAE config: upsample_factor != 1")
        try:
            return cls(
                name=name,
                latent_channels=int(c["latent_channels"]),
                block_out_channels=tuple(c["block_out_channels"]),
                layers_per_block=tuple(c["layers_per_block"]),
                spatio_temporal_scaling=tuple(c["spatio_temporal_scaling"]),
                decoder_block_out_channels=tuple(c["decoder_block_out_channels"]),
                decoder_layers_per_block=tuple(c["decoder_layers_per_block"]),
                decoder_spatio_temporal_scaling=tuple(c["decoder_spatio_temporal_scaling"]),
                patch_size=int(c["patch_size"]),
                decoder_causal=bool(c["decoder_causal"]),
                resnet_norm_eps=float(c["resnet_norm_eps"]),
                scaling_factor=float(c["scaling_factor"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ReadtalkError(f"bad LTX VAE config.json: {type(e).__name__} {e}") from None

    def same_layout(self, other: VAEConfig) -> bool:
        """Whether both build the same network (names and latent scaling aside)."""
        return dataclasses.replace(self, name="", scaling_factor=1.0) == dataclasses.replace(
            other, name="", scaling_factor=1.0
        )


VAE_PRESETS: dict[str, VAEConfig] = {
    # ~0.1M parameters: every code path (patchify, 3 down/up-samplings, causal decoder) at a
    # size that runs in milliseconds; 32x32x8 compression like the real thing.
    "debug": VAEConfig(
        name="debug",
        latent_channels=8,
        block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True),
    ),
    # 2.8M parameters, 32 latent channels: trains on a 2-core CPU at 128-256 px
    # (fwd+bwd of one 33-frame clip on one thread: ~1.3 s at 128 px, ~2.5 s at 256 px).
    "small": VAEConfig(
        name="small",
        latent_channels=32,
        block_out_channels=(16, 32, 64),
        layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True),
    ),
    # ~5M parameters, 32 latent channels, residual resampling (see VAEConfig.residual): about
    # the cost of ``small`` per step and much faster to train.
    "res-small": VAEConfig(
        name="res-small",
        latent_channels=32,
        block_out_channels=(16, 32, 64, 128),
        decoder_block_out_channels=(32, 64, 128),
        layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True),
        residual=True,
    ),
    # 28.7M parameters, 64 latent channels, residual resampling: twice the latent of res-small
    # for small details (a mouth a few pixels open); about 4x its cost per step.
    "res-base": VAEConfig(
        name="res-base",
        latent_channels=64,
        block_out_channels=(32, 64, 128, 256),
        decoder_block_out_channels=(64, 128, 256),
        layers_per_block=(1, 1, 2, 2),
        spatio_temporal_scaling=(True, True, True),
        residual=True,
    ),
    # 14.7M parameters, 64 latent channels: the larger CPU-trainable size
    # (~1.4 s at 128 px, ~4.2 s at 256 px per 33-frame clip, one thread).
    "base": VAEConfig(
        name="base",
        latent_channels=64,
        block_out_channels=(32, 64, 128),
        layers_per_block=(1, 1, 2, 2),
        spatio_temporal_scaling=(True, True, True),
    ),
    # The official LTX-Video 0.9.0 VAE (419,193,649 parameters): diffusers'
    # AutoencoderKLLTXVideo defaults = get_vae_config("0.9.0") of its conversion script.
    "ltx": VAEConfig(
        name="ltx",
        latent_channels=128,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=(4, 3, 3, 3, 4),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_causal=False,
    ),
}

# res-small with LTX's 128 latent channels (4x the latent numbers per 32x32x8 block, at about
# the same cost per step): the test of whether the latent's size, not the network's, is what
# loses a small mouth (docs/stage1.md).
VAE_PRESETS["res-small-c128"] = dataclasses.replace(
    VAE_PRESETS["res-small"], name="res-small-c128", latent_channels=128
)


def get_preset(name: str) -> VAEConfig:
    """The named preset, or a ReadtalkError listing the names."""
    try:
        return VAE_PRESETS[name]
    except KeyError:
        raise ReadtalkError(
            f"unknown VAE preset {name!r}; choose one of {', '.join(VAE_PRESETS)}"
        ) from None


def _resolve(config: VAEConfig | str) -> VAEConfig:
    return get_preset(config) if isinstance(config, str) else config


# ---------------------------------------------------------------------------------- input checks


def _near(n: int, step: int, offset: int) -> str:
    """The valid sizes just below and above ``n`` (of the form ``offset + step * k``)."""
    lo = offset + step * ((n - offset) // step)
    options = [v for v in (lo, lo + step) if v >= max(offset, 1)]
    return " or ".join(str(v) for v in options)


def _check_frames_and_size(frames: int, height: int, width: int, t: int, s: int) -> None:
    if frames < 1 or (frames - 1) % t:
        raise ReadtalkError(
            f"video has {frames} frames; the VAE takes {t}k+1 frames (e.g. {_near(frames, t, 1)})"
        )
    for what, n in (("height", height), ("width", width)):
        if n < s or n % s:
            raise ReadtalkError(
                f"video {what} {n} is not a multiple of {s} (e.g. {_near(n, s, 0)})"
            )


# -------------------------------------------------------------------------------------- the model


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


READTALK_FORMAT = "readtalk-vae/1"
_LOGVAR_RANGE = (-30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution


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


class VideoVAE(LatentCodec):
    """Temporal VAE: ``encode`` video -> latent, ``decode`` latent -> video (see module doc).

    The network is ``self.ae``, a diffusers ``AutoencoderKLLTXVideo``; this class adds the input
    checks, the posterior split (``encode_dist``), exact piece-wise coding of long videos,
    latent normalisation and checkpoint I/O. Everything else (``.to``, ``.train``, optimisers,
    ``self.ae.enable_gradient_checkpointing()``) is plain PyTorch / diffusers.
    """

    def __init__(self, config: VAEConfig | str, *, meta: bool = False) -> None:
        """A randomly initialised VAE of ``config`` (a ``VAEConfig`` or a preset name).

        ``meta=True`` builds it on the meta device: shapes only, no memory, no initialisation
        (counting parameters, or loading weights into it; the 419M-parameter ``ltx`` takes ~6 s
        to initialise otherwise).
        """
        super().__init__()
        self.config = _resolve(config)
        kwargs = self.config.diffusers_kwargs()
        if meta:
            with torch.device("meta"):
                self.ae = AutoencoderKLLTXVideo(**kwargs)
        else:
            self.ae = AutoencoderKLLTXVideo(**kwargs)
        use_frame_path(self.ae)  # one-frame inputs convolve in 2D (readtalk.vae.frameconv)

    # ---- checks (run before any convolution, so mistakes cost nothing and read clearly)

    def check_video(self, video: Tensor) -> None:
        """Raise a one-line ReadtalkError unless ``video`` is a valid ``(B, 3, F, H, W)`` clip."""
        check_video_shape(video)
        if not video.is_floating_point():
            raise ReadtalkError(f"video must be float in [-1, 1], got {video.dtype}")
        _, _, f, h, w = video.shape
        _check_frames_and_size(f, h, w, self.temporal_factor, self.spatial_factor)
        check_video_values(video)

    def check_latent(self, latent: Tensor) -> None:
        """Raise a one-line ReadtalkError unless ``latent`` is a valid ``(B, C, f, h, w)``."""
        c = self.latent_channels
        if not isinstance(latent, Tensor) or latent.dim() != 5 or latent.shape[1] != c:
            shape = tuple(latent.shape) if isinstance(latent, Tensor) else type(latent).__name__
            raise ReadtalkError(f"latent must be a (B, {c}, f, h, w) tensor, got {shape}")
        if not latent.is_floating_point():
            raise ReadtalkError(f"latent must be a float tensor, got {latent.dtype}")
        if min(latent.shape[2:]) < 1:
            raise ReadtalkError(f"latent has an empty axis: {tuple(latent.shape)}")
        _check_values(latent, "latent")

    # ---- encoding

    def _encoder(self, video: Tensor) -> Tensor:
        return self.ae.encoder(video.to(self.dtype))  # (B, 2C, f, h, w): mean | logvar

    def encode_dist(self, video: Tensor, *, piece: int | None = None) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, logvar)``, each ``(B, C, f, h, w)``; what training needs for KL.

        LTX predicts one log-variance per position shared by all channels ("uniform"); it is
        returned broadcast to ``C`` channels like diffusers does. ``piece`` (latent frames) codes
        long clips piece by piece, exactly (see ``encode_pieces``).
        """
        if piece is not None:
            return self.encode_pieces(video, piece=piece)
        self.check_video(video)
        return self._split(self._encoder(video))

    def _split(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = h.chunk(2, dim=1)  # (B, C, f, h, w) each
        return mean, logvar.clamp(*_LOGVAR_RANGE)

    def encode(
        self,
        video: Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        piece: int | None = None,
    ) -> Tensor:
        """Latent ``(B, C, f, h, w)``: the posterior mean, or a sample if ``sample=True``.

        The mean is the right default for inference and for caching latents of a dataset (it is
        deterministic); sampling is the VAE's training-time regulariser.
        """
        mean, logvar = self.encode_dist(video, piece=piece)
        return _sample(mean, logvar, generator) if sample else mean

    def encode_pieces(
        self, video: Tensor, *, piece: int | None = None, context: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``encode_dist`` computed ``piece`` latent frames at a time, with bounded memory.

        The encoder is causal, so latent frame ``j`` depends only on frames up to ``8 j``, and
        only on the last ``encoder_context`` latent frames' worth of them. Each piece is encoded
        together with ``context`` latent frames of video before it (default: the full receptive
        field) and the context's outputs are dropped. Pieces start on a frame ``8 m``, which
        keeps every stride-2 layer aligned with the full pass, so the result equals ``encode``
        up to float rounding. ``piece`` defaults to the context, so at most half of the work
        is spent on context.
        """
        self.check_video(video)
        piece, ctx = _piece_args(piece, context, self.config.encoder_context)
        t = self.temporal_factor
        f = 1 + (video.shape[2] - 1) // t
        means, logvars = [], []
        for a in range(0, f, piece):
            b = min(a + piece, f)
            c = min(a, ctx)  # latent frames of context; >= 1 once a > 0
            chunk = video[:, :, t * (a - c) : t * (b - 1) + 1]  # (B, 3, 1 + t (b-a+c-1), H, W)
            mean, logvar = self._split(self._encoder(chunk))
            means.append(mean[:, :, c:])
            logvars.append(logvar[:, :, c:])
        return torch.cat(means, dim=2), torch.cat(logvars, dim=2)

    # ---- decoding

    def decode(self, latent: Tensor, *, clamp: bool = True, piece: int | None = None) -> Tensor:
        """Video ``(B, 3, F, H, W)`` from a latent ``(B, C, f, h, w)``; ``F = 1 + 8 (f - 1)``.

        ``clamp=True`` (default) clips to ``[-1, 1]``, which is what inference wants; the raw
        decoder output can overshoot slightly. Training must use ``clamp=False`` (or ``forward``),
        since clipping zeroes the gradient of every overshooting pixel. ``piece`` decodes
        ``piece`` latent frames at a time with bounded memory and the same result
        (``iter_decode``).
        """
        if piece is not None:
            return self.decode_pieces(latent, piece=piece, clamp=clamp)
        self.check_latent(latent)
        video = self.ae.decoder(latent.to(self.dtype))  # (B, 3, F, H, W)
        return video.clamp(-1.0, 1.0) if clamp else video

    def iter_decode(
        self,
        latent: Tensor,
        *,
        piece: int | None = None,
        context: int | None = None,
        clamp: bool = True,
        prefix: Tensor | None = None,
        state: dict | None = None,
    ) -> Iterator[Tensor]:
        """Decode ``piece`` latent frames at a time, yielding consecutive runs of video frames.

        Memory is bounded by one piece and its context, whatever the length; a caller
        that writes each run out (under ``torch.no_grad()``) never holds the whole video.
        Every layer of the decoder is local in time, so an output frame depends only on latent
        frames within ``decoder_context`` of it. Each piece is decoded with that much true
        context (left only for a causal decoder, both sides otherwise) and the context frames
        are cut off, which makes the concatenation equal to the full ``decode`` up to float
        rounding. With a causal decoder (our presets) context is only on the left; the official
        LTX decoder is not causal and needs 24 latent frames on both sides. ``piece`` defaults
        to the context, which bounds the extra work to 2x (causal) or 3x (non-causal).

        The first latent frame decodes to 1 frame and every later one to 8; a piece starting
        at latent ``a > 0`` therefore always keeps at least one context latent, whose extra
        single frame is dropped. Bad arguments raise here, not at the first ``next()``.

        ``prefix`` ``(B, C, p, h, w)``: latents that come *before* ``latent`` in the same
        sequence (a long video generated clip by clip: the previous clip's latents). They are
        decoded as left context only and nothing of them is yielded; every frame of ``latent``
        then continues the prefix's video, 8 frames per latent frame (``8 f`` in all, no single
        first frame), exactly as if ``cat([prefix, latent])`` were decoded whole and the prefix's
        frames cut off (causal decoders only; with the last ``context`` prefix latents).

        ``state`` (a dict carried along one video) is accepted for the factorised VAE's sake
        and left alone: this decoder needs nothing beyond the prefix.
        """
        self.check_latent(latent)
        piece, left = _piece_args(piece, context, self.config.decoder_context)
        if prefix is None or prefix.shape[2] == 0:
            return self._iter_decode(latent, piece, left, clamp)
        if not self.config.decoder_causal:
            raise ReadtalkError("decoding after a prefix needs a causal decoder")
        self.check_latent(prefix)
        if prefix.shape[:2] != latent.shape[:2] or prefix.shape[3:] != latent.shape[3:]:
            raise ReadtalkError(
                f"prefix latent {tuple(prefix.shape)} does not match latent {tuple(latent.shape)}"
            )
        prefix = prefix[:, :, -left:].to(latent)
        full = torch.cat([prefix, latent], dim=2)
        return self._iter_decode(full, piece, left, clamp, first=prefix.shape[2])

    def _iter_decode(
        self, latent: Tensor, piece: int, left: int, clamp: bool, first: int = 0
    ) -> Iterator[Tensor]:
        right = 0 if self.config.decoder_causal else left
        t, f = self.temporal_factor, latent.shape[2]
        for a in range(first, f, piece):
            b = min(a + piece, f)
            cl, cr = min(a, left), min(f - b, right)
            out = self.ae.decoder(latent[:, :, a - cl : b + cr].to(self.dtype))  # (B, 3, F', H, W)
            start = 0 if a == 0 else t * (cl - 1) + 1  # first frame of latent a within the piece
            count = self.config.frames_for(b) - (0 if a == 0 else self.config.frames_for(a))
            out = out[:, :, start : start + count]
            yield out.clamp(-1.0, 1.0) if clamp else out

    def decode_pieces(
        self,
        latent: Tensor,
        *,
        piece: int | None = None,
        context: int | None = None,
        clamp: bool = True,
    ) -> Tensor:
        """``decode`` computed piece by piece (see ``iter_decode``); same result, less memory.

        Peak memory is the returned video plus one piece's activations (runs are copied into a
        preallocated output rather than concatenated, which would hold the video twice).
        """
        video = None
        done = 0
        for run in self.iter_decode(latent, piece=piece, context=context, clamp=clamp):
            if video is None:
                b, c, _, h, w = run.shape
                frames = self.config.frames_for(latent.shape[2])
                video = run.new_empty(b, c, frames, h, w)  # (B, 3, F, H, W)
            video[:, :, done : done + run.shape[2]] = run
            done += run.shape[2]
        assert video is not None and done == video.shape[2]
        return video

    def forward(
        self, video: Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> VAEOutput:
        """Training pass: posterior, (sampled) latent and the unclamped reconstruction."""
        mean, logvar = self.encode_dist(video)
        latent = _sample(mean, logvar, generator) if sample else mean
        recon = self.decode(latent, clamp=False)
        return VAEOutput(recon=recon, latent=latent, mean=mean, logvar=logvar)

    # ---- latent normalisation (normalize / denormalize: LatentCodec)

    def _latent_stats(self) -> tuple[Tensor, Tensor]:
        """The latent statistics (LTX ships per-channel ``latents_mean`` / ``latents_std``)."""
        return self.ae.latents_mean, self.ae.latents_std

    @torch.no_grad()
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store per-channel latent statistics (e.g. measured on encoded training clips)."""
        set_channel_stats(self.ae.latents_mean, self.ae.latents_std, mean, std, "latent")

    # ---- our release format

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write a single self-describing safetensors file (config JSON in its metadata).

        ``metadata`` adds free-form entries, stored as strings (e.g. the training step). The
        write is atomic: the file appears under its name only once complete.
        """
        path = Path(path)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.update(format=READTALK_FORMAT, config=json.dumps(self.config.to_dict()))
        return save_atomic(path, self.ae.state_dict(), meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> VideoVAE:
        """Load a file written by ``save`` (use ``from_pretrained`` for LTX weights)."""
        path = _require(path)
        keys, meta = _peek(path)
        if meta.get("format") != READTALK_FORMAT:
            raise ReadtalkError(
                f"{path} is not a readtalk VAE checkpoint (no {READTALK_FORMAT!r} metadata); "
                "use VideoVAE.from_pretrained for LTX-Video weights"
            )
        try:
            config = VAEConfig.from_dict(json.loads(meta["config"]))
        except (KeyError, json.JSONDecodeError, AttributeError) as e:
            raise ReadtalkError(f"{path}: unreadable VAE config in metadata ({e})") from None
        return cls._from_state_dict(config, _read(path, keys), str(path), dtype)

    # ---- pretrained LTX-Video weights

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        preset: VAEConfig | str = "ltx",
        *,
        dtype: torch.dtype | None = torch.float32,
    ) -> VideoVAE:
        """Load pretrained LTX-Video VAE weights from a local path; never downloads.

        ``path`` is one of
          * a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), or a
            pipeline folder holding one as ``vae/``; its config.json defines the network;
          * a single safetensors file in the original LTX-Video layout, either a whole model
            (``ltx-video-2b-v0.9.safetensors``: VAE keys under ``vae.``, transformer ignored
            and never read) or a standalone VAE; ``preset`` defines the network;
          * a file written by ``save``.
        Weights are cast to ``dtype`` (float32 by default; the official files are bf16, which
        is slow on CPU); ``None`` keeps them as stored.
        """
        path = _require(path, allow_dir=True)
        if path.is_dir():
            return cls._from_folder(path, preset, dtype)
        keys, meta = _peek(path)
        if meta.get("format") == READTALK_FORMAT:
            return cls.load(path, dtype=dtype)
        return cls._from_single_file(path, keys, _resolve(preset), dtype)

    @classmethod
    def _from_folder(
        cls, path: Path, preset: VAEConfig | str, dtype: torch.dtype | None
    ) -> VideoVAE:
        folder = path
        if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"
        if not (folder / "config.json").is_file():
            raise ReadtalkError(
                f"{path} has no config.json (nor vae/config.json): not a diffusers folder"
            )
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ReadtalkError(f"{folder / 'config.json'} is not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise ReadtalkError(f"{folder / 'config.json'} is not a JSON object")
        kind = config.get("_class_name")
        files = _weight_files(folder)
        if kind == "CausalVideoAutoencoder":  # the original LTX-Video repo's own VAE folder
            if len(files) != 1:
                raise ReadtalkError(f"{folder} needs exactly one .safetensors weight file")
            keys, _ = _peek(files[0])
            return cls._from_single_file(files[0], keys, _resolve(preset), dtype)
        if kind not in (None, "AutoencoderKLLTXVideo"):
            raise ReadtalkError(
                f"{folder / 'config.json'} describes a {kind}, not an AutoencoderKLLTXVideo"
            )
        vae_config = VAEConfig.from_diffusers(config)
        named = [p for p in VAE_PRESETS.values() if p.same_layout(vae_config)]
        if named:
            vae_config = dataclasses.replace(vae_config, name=named[0].name)
        if not files:
            raise ReadtalkError(
                f"{folder} has no diffusion_pytorch_model*.safetensors (PyTorch .bin weights "
                "are not supported; convert them to safetensors)"
            )
        state: dict[str, Tensor] = {}
        for file in files:
            keys, _ = _peek(file)
            state.update(_read(file, keys))
        return cls._from_state_dict(vae_config, state, str(folder), dtype)

    @classmethod
    def _from_single_file(
        cls, path: Path, keys: list[str], config: VAEConfig, dtype: torch.dtype | None
    ) -> VideoVAE:
        if any(k.startswith("vae.") for k in keys):  # a whole model: read the VAE tensors only
            state = _read(path, [k for k in keys if k.startswith("vae.")])
        elif any(k.startswith(("encoder.", "decoder.")) for k in keys):
            if any(".resnets." in k or ".mid_block." in k for k in keys):  # diffusers layout
                return cls._from_state_dict(config, _read(path, keys), str(path), dtype)
            state = {f"vae.{k}": v for k, v in _read(path, keys).items()}  # a standalone VAE
        else:
            hint = ""
            if any("transformer_blocks" in k or "diffusion_model" in k for k in keys):
                hint = " (it looks like a transformer checkpoint)"
            raise ReadtalkError(f"{path} has no VAE weights{hint}")
        return cls._from_state_dict(config, _convert_original(state, path), str(path), dtype)

    @classmethod
    def _from_state_dict(
        cls, config: VAEConfig, state: dict[str, Tensor], source: str, dtype: torch.dtype | None
    ) -> VideoVAE:
        """Build ``config`` on the meta device and assign ``state`` after checking every shape."""
        vae = cls(config, meta=True)
        expected = vae.ae.state_dict()
        c = config.latent_channels
        # Checkpoints without statistics (ours before fitting, some conversions) mean identity.
        if "latents_mean" not in state and "latents_mean" in expected:
            state["latents_mean"] = torch.zeros(c)
        if "latents_std" not in state and "latents_std" in expected:
            state["latents_std"] = torch.ones(c)
        assign_state(vae.ae, state, source, f"{config.name!r} VAE", dtype)
        return vae


# ------------------------------------------------------------------------------------- helpers


def _check_values(x: Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ReadtalkError(f"{what} contains NaN or infinite values")


def _sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None) -> Tensor:
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


def _channel_view(stat: Tensor, like: Tensor) -> Tensor:
    return stat.to(device=like.device, dtype=like.dtype).view(1, -1, *([1] * (like.dim() - 2)))


def _piece_args(piece: int | None, context: int | None, reach: int) -> tuple[int, int]:
    if piece is not None and piece < 1:
        raise ReadtalkError(f"piece must be at least 1 latent frame, got {piece}")
    if context is not None and context < 0:
        raise ReadtalkError(f"context must not be negative, got {context}")
    # A piece after the first always needs one context latent: the first latent of any decoded
    # or encoded run is the causal "first frame" and stands for 1 frame, not 8.
    context = max(1, reach if context is None else context)
    return (context if piece is None else piece), context


def _require(path: str | os.PathLike, *, allow_dir: bool = False) -> Path:
    p = Path(path)
    if not p.exists():
        raise ReadtalkError(f"VAE checkpoint not found: {p}")
    if p.is_dir() and not allow_dir:
        raise ReadtalkError(f"VAE checkpoint is a folder, expected a .safetensors file: {p}")
    if p.is_file() and p.stat().st_size == 0:
        raise ReadtalkError(f"VAE checkpoint is empty: {p}")
    return p


def _peek(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file, without reading any tensor."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReadtalkError(f"{path} is not a safetensors file ({msg})") from None


def _read(path: Path, keys: list[str]) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReadtalkError(f"cannot read tensors from {path} ({msg})") from None


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of a diffusers folder: one file, shards, or one dtype variant."""
    plain = folder / "diffusion_pytorch_model.safetensors"
    if plain.is_file():
        return [plain]
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise ReadtalkError(f"{index} is not a valid shard index ({e})") from None
        return [folder / s for s in shards]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) <= 1:
        return found
    for variant in ("fp32", "bf16", "fp16"):
        p = folder / f"diffusion_pytorch_model.{variant}.safetensors"
        if p in found:
            return [p]
    raise ReadtalkError(f"{folder} has several .safetensors files; cannot tell which is the VAE")


def _convert_original(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Original LTX-Video key names (``vae.``-prefixed) -> diffusers ``AutoencoderKLLTXVideo``.

    Uses diffusers' own single-file converter (a pure renaming, no download), after refusing
    the 0.9.1+ VAEs whose decoders it would map onto a design we do not run.
    """
    from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

    if "vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight" in state or any(
        "last_scale_shift_table" in k for k in state
    ):
        raise ReadtalkError(
            f"{path} holds an LTX-Video 0.9.1+ VAE (timestep-conditioned decoder); "
            "readtalk supports the 0.9.0 VAE (ltx-video-2b-v0.9)"
        )
    conv_out = state.get("vae.encoder.conv_out.conv.weight")
    if conv_out is None:
        raise ReadtalkError(f"{path} has VAE keys but no encoder.conv_out: not an LTX-Video VAE")
    if conv_out.dim() == 5 and conv_out.shape[1] == 2048:
        raise ReadtalkError(
            f"{path} holds an LTX-Video 0.9.5+ VAE; readtalk supports the 0.9.0 VAE"
        )
    return convert_ltx_vae_checkpoint_to_diffusers(dict(state))
