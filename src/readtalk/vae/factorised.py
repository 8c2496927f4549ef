"""The factorised VAE: a single-frame image VAE for every frame, and a small "packer" on top
that compresses each run of 8 per-frame latents into one latent (32x32x8, as the video VAE).

Why: a causal video VAE trained on a 2-core CPU keeps SynthTalk's mouth in its single-frame
path (``mouth_dark_corr`` 0.96 for the demo VAE) and loses it in its 8-frame latents (0.00;
docs/stage1.md). A small object's per-frame size is the last thing any 32x-spatial conv
autoencoder learns. Learning the temporal compression *on top of* a per-frame code is fast:
the packer trains in minutes on cached per-frame latents and keeps the mouth at 0.92 of the
0.96 ceiling on held-out clips (``docs/experiments/temporal_packer_probe.py``).

Layout (everything below speaks of standardised per-frame latents ``s = (z - mean) / std``,
with ``z`` the frame VAE's posterior mean and per-channel statistics measured on training
frames):

* video ``(B, 3, F, H, W)``, ``F = 8k + 1``, ``H, W`` multiples of the frame VAE's factor;
* latent ``(B, K, f, h, w)``, ``f = 1 + (F - 1) / 8``; latent 0 is frame 0's ``s`` as it is
  (so ``K`` equals the frame VAE's channels), latent ``j >= 1`` packs frames ``8j-7 .. 8j``;
* encoding a group sees the true ``s`` of the frame before it (its *context*); decoding
  a group sees the last frame decoded before it, so one group continues the last. A flag
  channel tells the packer whether it has a context at all: decoding after a truncated prefix
  (``iter_decode(prefix=...)``) starts its first prefix latent without one, as trained with
  context dropout.

The interface is ``VideoVAE``'s: ``encode``, ``decode``, ``iter_decode(prefix=)``,
``normalize`` / ``denormalize`` with stored latent statistics, ``save`` / ``load`` (one
safetensors file with the config in its metadata; ``load_vae`` picks the class by format).
The latent is deterministic (the packer is a plain autoencoder): ``encode(sample=True)`` is
refused rather than silently ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from readtalk.errors import ReadtalkError
from readtalk.release import peek_safetensors
from readtalk.vae.codec import (
    READTALK_FORMAT,
    LatentCodec,
    assign_state,
    check_video_shape,
    check_video_values,
    save_atomic,
    set_channel_stats,
)
from readtalk.vae.config import VAEConfig, _check_frames_and_size
from readtalk.vae.ltx_weights import _read, _require
from readtalk.vae.model import VideoVAE
from readtalk.vae.refiner import Reference, Refiner

FACTORISED_FORMAT = "readtalk-fvae/1"
FRAME_CHUNK = 16  # frames coded by the frame VAE at once (bounds memory on long clips)


@dataclass(frozen=True)
class FactorisedConfig:
    """A frame VAE's config and the packer's sizes."""

    frame: VAEConfig = field(default_factory=lambda: VAEConfig(name="debug"))
    channels: int = 32  # packed latent channels (= the frame VAE's latent channels)
    width: int = 256  # the packer's convolution width
    group: int = 8  # frames per packed latent (the temporal factor)
    residual: bool = False  # the decoder predicts each frame's change from the context frame
    scaling_factor: float = 1.0  # as VAEConfig's: normalized = (z - mean) * factor / std
    # > 0: a portrait refiner (``vae.refiner``) of this width copies the portrait's detail into
    # decoded frames when a reference is given; 0: none
    refiner_width: int = 0
    refiner_scale: int = 4  # the refiner's flow network works at 1/refiner_scale resolution

    def __post_init__(self) -> None:
        if self.channels != self.frame.latent_channels:
            raise ReadtalkError(
                f"the packed latent needs the frame VAE's {self.frame.latent_channels} channels "
                f"(latent 0 is frame 0's own latent), got channels={self.channels}"
            )
        if self.width < 1 or self.group < 1:
            raise ReadtalkError(f"width and group must be >= 1, got {self.width}, {self.group}")
        if self.refiner_width < 0 or self.refiner_scale < 1:
            raise ReadtalkError(
                f"refiner_width must be >= 0 and refiner_scale >= 1, got {self.refiner_width}, "
                f"{self.refiner_scale}"
            )

    @property
    def name(self) -> str:
        return f"factorised-{self.frame.name}"

    @property
    def latent_channels(self) -> int:
        return self.channels

    @property
    def spatial_factor(self) -> int:
        return self.frame.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.group

    # Decoding a group needs only the frame decoded before it; a prefix of 2 latents gives the
    # first one (decoded without context) a group to settle in before the new latents.
    decoder_context: int = field(default=2, init=False, repr=False)
    decoder_causal: bool = field(default=True, init=False, repr=False)
    encoder_context: int = field(default=1, init=False, repr=False)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        t, s = self.temporal_factor, self.spatial_factor
        _check_frames_and_size(frames, height, width, t, s)
        return (self.channels, 1 + (frames - 1) // t, height // s, width // s)

    def frames_for(self, latent_frames: int) -> int:
        return 1 + self.group * (latent_frames - 1)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "frame": self.frame.to_dict(),
            "channels": self.channels,
            "width": self.width,
            "group": self.group,
            "residual": self.residual,
            "scaling_factor": self.scaling_factor,
        }
        if self.refiner_width:  # files without a refiner stay as they were
            out.update(refiner_width=self.refiner_width, refiner_scale=self.refiner_scale)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactorisedConfig:
        known = {
            "channels", "width", "group", "residual", "scaling_factor", "refiner_width",
            "refiner_scale",
        }  # fmt: skip
        return cls(
            frame=VAEConfig.from_dict(data["frame"]), **{k: data[k] for k in known if k in data}
        )


class Packer(nn.Module):
    """(B, g, C, h, w) standardised per-frame latents <-> (B, K, h, w) packed latent.

    Both halves are two 3x3 convolutions of ``width`` channels and a 1x1 projection, and both
    see a context: the per-frame latent (B, C, h, w) of the frame before the group and a flag
    channel (1: the context is real, 0: there is none and it is zeros). With ``residual`` the
    decoder's output is added to the context frame (each frame is predicted as a change from
    the frame before the group)."""

    def __init__(self, c: int, k: int, width: int, group: int, residual: bool = False) -> None:
        super().__init__()
        self.group, self.residual = group, residual
        ctx = c + 1

        def stack(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, width, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(width, cout, 1),
            )

        self.enc = stack(group * c + ctx, k)
        self.dec = stack(k + ctx, group * c)

    @staticmethod
    def _context(prev: Tensor, like: Tensor, have: Tensor | None = None) -> Tensor:
        """``prev`` (B, C, h, w) -> (B, C + 1, h, w): the context and its flag.

        ``have`` (B,) bool marks the rows whose context is real (None: all of them)."""
        b, _, h, w = like.shape
        flag = like.new_ones(b, 1, h, w)
        if have is not None:
            keep = have.to(like.dtype).view(b, 1, 1, 1)
            prev, flag = prev * keep, flag * keep
        return torch.cat([prev, flag], dim=1)

    def encode(self, x: Tensor, prev: Tensor) -> Tensor:
        b, g, c, h, w = x.shape
        flat = x.reshape(b, g * c, h, w)
        return self.enc(torch.cat([flat, self._context(prev, flat)], dim=1))

    def decode(self, z: Tensor, prev: Tensor | None, have: Tensor | None = None) -> Tensor:
        """``prev`` None: no context (the flag is 0); ``have`` masks it per row."""
        b, _, h, w = z.shape
        if prev is None:
            c = self.dec[0].in_channels - z.shape[1] - 1
            prev = z.new_zeros(b, c, h, w)
            have = torch.zeros(b, dtype=torch.bool, device=z.device)
        ctx = self._context(prev, z, have)
        out = self.dec(torch.cat([z, ctx], dim=1)).reshape(b, self.group, -1, h, w)
        return out + ctx[:, None, :-1] if self.residual else out

    def forward(self, x: Tensor, prev: Tensor, have: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x, prev), prev, have)


class FactorisedVAE(LatentCodec):
    """Frame VAE (``self.frame``, a ``VideoVAE`` used one frame at a time) + ``self.packer``."""

    def __init__(
        self, config: FactorisedConfig, *, frame: VideoVAE | None = None, meta: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.frame = frame if frame is not None else VideoVAE(config.frame, meta=meta)
        c, k = config.frame.latent_channels, config.channels
        with torch.device("meta") if meta else contextlib.nullcontext():
            self.packer = Packer(c, k, config.width, config.group, config.residual)
            self.refiner = (
                Refiner(config.refiner_width, config.refiner_scale)
                if config.refiner_width
                else None
            )
        self.register_buffer("frame_mean", torch.zeros(c))
        self.register_buffer("frame_std", torch.ones(c))
        self.register_buffer("latents_mean", torch.zeros(k))
        self.register_buffer("latents_std", torch.ones(k))

    # ---- checks

    def check_video(self, video: Tensor) -> None:
        check_video_shape(video)
        if not video.is_floating_point():
            raise ReadtalkError(f"video must be float in [-1, 1], got {video.dtype}")
        self.config.latent_shape(*video.shape[2:])  # frames 8k+1, sizes multiples of 32
        check_video_values(video)

    def check_latent(self, latent: Tensor) -> None:
        self.frame.check_latent(latent)  # same channel count by construction

    # ---- per-frame coding and standardisation

    def _std(self, z: Tensor) -> Tensor:  # (..., C, h, w) frame VAE latents -> standardised
        return (z - self.frame_mean.view(-1, 1, 1)) / self.frame_std.view(-1, 1, 1)

    def _unstd(self, s: Tensor) -> Tensor:
        return s * self.frame_std.view(-1, 1, 1) + self.frame_mean.view(-1, 1, 1)

    def frame_means(self, video: Tensor) -> Tensor:
        """(B, 3, F, H, W) -> (B, F, C, h, w): every frame encoded alone by the frame VAE
        (posterior mean, as it comes). No checks (``encode`` runs them)."""
        b, _, f, hh, ww = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, 3, 1, hh, ww)
        out = [
            self.frame._split(self.frame._encoder(frames[i : i + FRAME_CHUNK]))[0][:, :, 0]
            for i in range(0, b * f, FRAME_CHUNK)
        ]
        return torch.cat(out).to(self.dtype).unflatten(0, (b, f))

    def frame_latents(self, video: Tensor) -> Tensor:
        """``frame_means``, standardised: what the packer takes."""
        return self._std(self.frame_means(video))

    def decode_frames(
        self, s: Tensor, clamp: bool = True, reference: Reference | None = None
    ) -> Tensor:
        """(B, n, C, h, w) standardised per-frame latents -> video (B, 3, n, H, W).

        ``reference`` (``self.reference(portrait)``, B = 1 or the batch's B): refine every frame
        with the portrait's detail (VAEs with a refiner; None: the frame decoder's frames)."""
        b, n = s.shape[:2]
        z = self._unstd(s).flatten(0, 1)[:, :, None].to(self.frame.dtype)  # (B n, C, 1, h, w)
        out = torch.cat(
            [self.frame.ae.decoder(z[i : i + FRAME_CHUNK]) for i in range(0, b * n, FRAME_CHUNK)]
        )[:, :, 0]  # (B n, 3, H, W)
        if reference is not None and self.refiner is not None:
            ref = reference.to(out.device, out.dtype)
            if ref.pair.shape[0] not in (1, b):
                raise ReadtalkError(f"{ref.pair.shape[0]} references for a batch of {b}")
            if ref.pair.shape[0] > 1:  # one portrait per batch row, each for its n frames
                out = self.refiner(out, ref.rows(n))
            else:
                out = torch.cat(
                    [
                        self.refiner(out[i : i + FRAME_CHUNK], ref)
                        for i in range(0, b * n, FRAME_CHUNK)
                    ]
                )
        video = out.unflatten(0, (b, n)).permute(0, 2, 1, 3, 4)
        return video.clamp(-1.0, 1.0) if clamp else video

    @torch.no_grad()
    def reference(self, image: Tensor) -> Reference | None:
        """A portrait (B, 3, H, W) in [-1, 1] prepared for ``decode_frames(reference=)``: the
        portrait and its own round trip through the frame VAE (None without a refiner)."""
        if self.refiner is None:
            return None
        if image.dim() != 4 or image.shape[1] != 3:
            raise ReadtalkError(f"a reference portrait is (B, 3, H, W), got {tuple(image.shape)}")
        x = image.to(self.device, self.frame.dtype)
        return self.refiner.prepare(x, self.redraw(x))

    @torch.no_grad()
    def redraw(self, image: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1], each encoded and decoded alone by the frame VAE
        (blurred as the frame decoder blurs), without the refiner."""
        x = image.to(self.device, self.frame.dtype)[:, :, None]
        self.check_video(x)
        return self.decode_frames(self.frame_latents(x))[:, :, 0]

    # ---- encoding

    def pack(self, s: Tensor) -> Tensor:
        """(B, F, C, h, w) standardised per-frame latents, F = 8k+1 -> latent (B, K, f, h, w)."""
        b, f, c, h, w = s.shape
        g = self.config.group
        n = (f - 1) // g
        if n == 0:
            return s[:, :1].transpose(1, 2)
        runs = s[:, 1:].reshape(b * n, g, c, h, w)
        prev = s[:, 0 : f - 1 : g].reshape(b * n, c, h, w)  # frames 0, 8, 16, ...
        z = self.packer.encode(runs, prev).unflatten(0, (b, n))  # (B, n, K, h, w)
        return torch.cat([s[:, :1], z], dim=1).transpose(1, 2)

    def encode(
        self,
        video: Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        piece: int | None = None,
    ) -> Tensor:
        """Latent ``(B, K, f, h, w)`` of a video (deterministic; frames coded 16 at a time)."""
        if sample:
            raise ReadtalkError("the factorised VAE's latent is deterministic: sample=False")
        self.check_video(video)
        return self.pack(self.frame_latents(video.to(self.frame.dtype)))

    # ---- decoding

    def unpack(
        self, latent: Tensor, last: Tensor | None, first: bool, blend: int = 0
    ) -> Iterator[Tensor]:
        """Yield (B, n, C, h, w) standardised per-frame latents, one latent at a time.

        ``first``: latent 0 is a clip's first frame (yields it as 1 frame); otherwise every
        latent is a group, the first decoded after ``last`` (None: without a context).
        ``blend`` (``blend_group_start``): frames over which a group's step from the frame
        before it is spread; the packer itself always continues from the unblended frames."""
        j = 0
        if first:
            last = latent[:, :, 0]
            yield last[:, None]
            j = 1
        for k in range(j, latent.shape[2]):
            run = self.packer.decode(latent[:, :, k], last)
            shown = run if last is None else blend_group_start(run, last, blend)
            last = run[:, -1]
            yield shown

    def iter_decode(
        self,
        latent: Tensor,
        *,
        piece: int | None = None,
        context: int | None = None,
        clamp: bool = True,
        prefix: Tensor | None = None,
        state: dict | None = None,
        blend: int = 0,
        reference: Reference | None = None,
    ) -> Iterator[Tensor]:
        """Decode ``piece`` latents at a time (default 2), yielding runs of video frames.

        ``reference`` (``self.reference(portrait)``): frames refined with the portrait's detail.

        ``blend``: spread the step into every 8-frame group over its first ``blend`` frames
        (``blend_group_start``; 0: as decoded).

        ``prefix`` ``(B, K, p, h, w)``: 8-frame latents that come before ``latent`` (a long
        video generated clip by clip); only their last ``context`` (default 2) are used, the
        first of them decoded without a context, and nothing of them is yielded; ``latent``
        then continues after them, 8 frames per latent. The packer is cheap and recurrent, so
        the result approximates (does not equal) decoding the whole sequence at once.

        ``state``: a dict carried from one call to the next along one video. Each call leaves
        the last frame it decoded in it (``state["last"]``, a standardised per-frame latent),
        and a later call with a ``prefix`` continues from that frame instead of decoding the
        prefix again: exactly from what was shown, which the residual decoder needs (its
        errors carry along the chain, so a fresh decode of the prefix ends elsewhere)."""
        self.check_latent(latent)
        if piece is not None and piece < 1:
            raise ReadtalkError(f"piece must be at least 1 latent frame, got {piece}")
        if context is not None and context < 0:
            raise ReadtalkError(f"context must not be negative, got {context}")
        piece = piece or 2
        keep = self.config.decoder_context if context is None else context
        last, first = None, True
        if prefix is not None and prefix.shape[2] > 0:
            self.check_latent(prefix)
            if prefix.shape[:2] != latent.shape[:2] or prefix.shape[3:] != latent.shape[3:]:
                raise ReadtalkError(
                    f"prefix latent {tuple(prefix.shape)} does not match latent "
                    f"{tuple(latent.shape)}"
                )
            first = False
            if state is not None and state.get("last") is not None:
                last = state["last"].to(latent.device, self.dtype)
            elif keep > 0:
                for run in self.unpack(prefix[:, :, -keep:].to(self.dtype), None, False):
                    last = run[:, -1]
        if blend < 0 or blend >= self.config.temporal_factor:
            raise ReadtalkError(
                f"blend must lie in [0, {self.config.temporal_factor - 1}] frames, got {blend}"
            )
        return self._iter_decode(
            latent.to(self.dtype), last, first, piece, clamp, state, blend, reference
        )

    def _iter_decode(
        self,
        latent: Tensor,
        last: Tensor | None,
        first: bool,
        piece: int,
        clamp: bool,
        state: dict | None,
        blend: int = 0,
        reference: Reference | None = None,
    ) -> Iterator[Tensor]:
        buf: list[Tensor] = []
        for i, run in enumerate(self.unpack(latent, last, first, blend)):
            buf.append(run)
            if len(buf) == piece or i == latent.shape[2] - 1:
                frames = torch.cat(buf, dim=1)
                if state is not None:
                    state["last"] = frames[:, -1]
                yield self.decode_frames(frames, clamp, reference)
                buf = []

    def decode(
        self,
        latent: Tensor,
        *,
        clamp: bool = True,
        piece: int | None = None,
        reference: Reference | None = None,
    ) -> Tensor:
        """Video ``(B, 3, F, H, W)`` from a latent ``(B, K, f, h, w)``; ``F = 1 + 8 (f - 1)``.
        ``reference``: refine with a portrait (``iter_decode``)."""
        it = self.iter_decode(latent, piece=piece, clamp=clamp, reference=reference)
        return torch.cat(list(it), dim=2)

    def decode_pieces(
        self,
        latent: Tensor,
        *,
        piece: int | None = None,
        context: int | None = None,
        clamp: bool = True,
    ) -> Tensor:
        return self.decode(latent, clamp=clamp, piece=piece)

    def encode_pieces(
        self, video: Tensor, *, piece: int | None = None, context: int | None = None
    ) -> Tensor:
        return self.encode(video)

    # ---- latent normalisation (LatentCodec)

    def _latent_stats(self) -> tuple[Tensor, Tensor]:
        return self.latents_mean, self.latents_std

    @torch.no_grad()
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        set_channel_stats(self.latents_mean, self.latents_std, mean, std, "latent")

    @torch.no_grad()
    def set_frame_stats(self, mean: Tensor, std: Tensor) -> None:
        """Per-channel statistics of the frame VAE's latents (measured on training frames)."""
        set_channel_stats(self.frame_mean, self.frame_std, mean, std, "frame latent")

    # ---- release format

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """One safetensors file (config JSON in its metadata), written atomically."""
        path = Path(path)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.update(format=FACTORISED_FORMAT, config=json.dumps(self.config.to_dict()))
        return save_atomic(path, self.state_dict(), meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> FactorisedVAE:
        path = _require(path)
        keys, meta = peek_safetensors(path)
        if meta.get("format") != FACTORISED_FORMAT:
            raise ReadtalkError(f"{path} is not a factorised VAE checkpoint")
        try:
            config = FactorisedConfig.from_dict(json.loads(meta["config"]))
        except (KeyError, TypeError, json.JSONDecodeError, AttributeError) as e:
            raise ReadtalkError(f"{path}: unreadable factorised VAE config ({e})") from None
        vae = cls(config, meta=True)
        assign_state(vae, _read(path, keys), str(path), f"{config.name!r} factorised VAE", dtype)
        return vae


def blend_group_start(run: Tensor, last: Tensor, frames: int) -> Tensor:
    """Spread the step from ``last`` (B, C, h, w), the frame before a group, into the group
    ``run`` (B, n, C, h, w) over its first ``frames`` frames: frame j moves back towards ``last``
    by ``(frames - j) / (frames + 1)`` of the step, so the jump at the group start becomes
    ``1 / (frames + 1)`` of it and the rest follows in equal parts. Causal (it needs nothing
    after the group), so a stream decodes the same frames as a whole video.

    Why: the packer decodes each 8-frame group from the frame before it, and its groups start
    with a step about 2.5x the median frame change (SynthTalk's truth at the same frames: 1.1x),
    which shows at every latent start, clip starts included (docs/streaming.md)."""
    if frames <= 0:
        return run
    out = run.clone()
    step = last - run[:, 0]  # (B, C, h, w)
    for j in range(min(frames, run.shape[1] - 1)):
        out[:, j] = run[:, j] + (frames - j) / (frames + 1) * step
    return out


def load_vae(
    path: str | os.PathLike, *, dtype: torch.dtype | None = None
) -> VideoVAE | FactorisedVAE:
    """Load any readtalk VAE release: a ``VideoVAE`` or a ``FactorisedVAE``, by its format."""
    p = _require(path)
    _, meta = peek_safetensors(p)
    if meta.get("format") == FACTORISED_FORMAT:
        return FactorisedVAE.load(p, dtype=dtype)
    if meta.get("format") == READTALK_FORMAT:
        return VideoVAE.load(p, dtype=dtype)
    raise ReadtalkError(
        f"{p} is not a readtalk VAE checkpoint (no {READTALK_FORMAT!r} or "
        f"{FACTORISED_FORMAT!r} metadata); use VideoVAE.from_pretrained for LTX-Video weights"
    )
