"""Temporal VAE configurations: ``VAEConfig``, the named presets and the frame/size checks.

Conventions (see ``readtalk.vae.model``): video ``(B, 3, F, H, W)`` with ``F = 8k + 1`` and
``H, W`` multiples of 32; latent ``(B, C, f, h, w)`` with ``f = 1 + (F - 1) / 8``.

Named sizes live in ``VAE_PRESETS`` (``debug`` for tests, ``small``/``base`` for CPU training,
``ltx`` for the official LTX-Video 0.9.0 weights).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Any

from diffusers import AutoencoderKLLTXVideo

from readtalk.errors import ReadtalkError


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
