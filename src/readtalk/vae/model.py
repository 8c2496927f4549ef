"""The temporal VAE: a thin, checked interface over diffusers' ``AutoencoderKLLTXVideo``.

READ compresses video with the pretrained LTX-Video VAE: 32x down-sampling in each spatial axis,
8x in time, 128 latent channels. The encoder is causal in time and encodes the first frame on
its own, so a clip has ``F = 8k + 1`` frames and ``f = 1 + (F - 1) / 8`` latent frames
(121 frames -> 16 latent frames; 512x512 -> 16x16 tokens per latent frame).

Conventions (everything in this module):

* video  ``(B, 3, F, H, W)``, RGB in ``[-1, 1]``; ``F = 8k + 1``; ``H, W`` multiples of 32
* latent ``(B, C, f, h, w)``; ``f = 1 + (F - 1) / 8``, ``h = H / 32``, ``w = W / 32``

Named sizes live in ``VAE_PRESETS`` of ``readtalk.vae.config`` (``debug`` for tests,
``small``/``base`` for CPU training, ``ltx`` for the official LTX-Video 0.9.0 weights). Our own
checkpoints are single safetensors files that carry their ``VAEConfig`` in the metadata
(``VideoVAE.save`` / ``VideoVAE.load``); pretrained LTX weights come in through
``VideoVAE.from_pretrained`` (a diffusers folder or an original LTX-Video single file, read by
``readtalk.vae.ltx_weights``), entirely offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLLTXVideo
from torch import Tensor

from readtalk.errors import ReadtalkError
from readtalk.vae.codec import (
    READTALK_FORMAT,
    LatentCodec,
    VAEOutput,
    _check_values,
    check_video_shape,
    check_video_values,
    save_atomic,
    set_channel_stats,
)
from readtalk.vae.config import VAEConfig, _check_frames_and_size, _resolve
from readtalk.vae.frameconv import use_frame_path
from readtalk.vae.ltx_weights import assign_weights, read_checkpoint, read_pretrained

_LOGVAR_RANGE = (-30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution


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

    def decode(
        self,
        latent: Tensor,
        *,
        clamp: bool = True,
        piece: int | None = None,
        reference: None = None,
    ) -> Tensor:
        """Video ``(B, 3, F, H, W)`` from a latent ``(B, C, f, h, w)``; ``F = 1 + 8 (f - 1)``.

        ``clamp=True`` (default) clips to ``[-1, 1]``, which is what inference wants; the raw
        decoder output can overshoot slightly. Training must use ``clamp=False`` (or ``forward``),
        since clipping zeroes the gradient of every overshooting pixel. ``piece`` decodes
        ``piece`` latent frames at a time with bounded memory and the same result
        (``iter_decode``). ``reference``: this VAE takes nothing from the portrait
        (``reference()`` is None), so it is accepted and not used.
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
        blend: int = 0,
        reference: None = None,
    ) -> Iterator[Tensor]:
        """Decode ``piece`` latent frames at a time, yielding consecutive runs of video frames.

        ``blend`` is the factorised VAE's group-start blend; this decoder convolves across
        latents itself and has no group steps to spread, so it is accepted and not used; nor is
        ``reference`` (the factorised VAE's portrait refiner; ``reference()`` is None here).

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
        return cls._from_state_dict(*read_checkpoint(path), dtype)

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
        return cls._from_state_dict(*read_pretrained(path, preset), dtype)

    @classmethod
    def _from_state_dict(
        cls, config: VAEConfig, state: dict[str, Tensor], source: str, dtype: torch.dtype | None
    ) -> VideoVAE:
        """Build ``config`` on the meta device and assign ``state`` after checking every shape."""
        vae = cls(config, meta=True)
        assign_weights(vae.ae, config, state, source, dtype)
        return vae


# ------------------------------------------------------------------------------------- helpers


def _sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None) -> Tensor:
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


def _piece_args(piece: int | None, context: int | None, reach: int) -> tuple[int, int]:
    if piece is not None and piece < 1:
        raise ReadtalkError(f"piece must be at least 1 latent frame, got {piece}")
    if context is not None and context < 0:
        raise ReadtalkError(f"context must not be negative, got {context}")
    # A piece after the first always needs one context latent: the first latent of any decoded
    # or encoded run is the causal "first frame" and stands for 1 frame, not 8.
    context = max(1, reach if context is None else context)
    return (context if piece is None else piece), context
