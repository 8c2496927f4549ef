"""SpeechAE: speech features -> speech latent codes aligned with the video latents (READ §2).

READ compresses video 8x in time, with the first frame encoded on its own (F = 8k+1 frames ->
f = k+1 latent frames). For the DiT to attend from video latent frame i to "the speech of latent
frame i", the speech must be compressed the same way. The SpeechAE does that:

- input: per-video-frame features from a frozen front end (Whisper-tiny: 2 frames of 384 per
  video frame at 25 fps), flattened to (B, F, 2*384), standardised with dataset statistics;
- encoder: a linear projection, then causal 1-D residual blocks and three stride-2 causal
  down-samplings (8x). The sequence is left-padded with 7 copies of its first frame, so code 0
  sees frame 0 alone and code j sees frames 8j-7 .. 8j (and the past): the VAE's rule, and
  causal, which streaming relies on;
- decoder: the mirror image, causal up-sampling back to per-frame features, dropping the 7
  padding frames.

Training (``train/speech.py``) is self-supervised: MSE reconstruction of the standardised
features plus a frame-level InfoNCE loss (the project's choice where the paper is silent): a
reconstructed frame must be closer (cosine) to its own original than to the other frames of the
clip, which keeps codes temporally discriminative rather than smooth averages.

For READ's ablation "SpeechAE absent" a SpeechAE of ``kind="raw"`` has no network: code j is
the standardised features of the eight video frames of latent frame j (frames 8j-7 .. 8j, frame
0 padded with copies of itself as above), concatenated, so the DiT's cross-attention receives the
raw per-frame features (``code_dim = 8 * feat_dim``). It is written by ``readtalk train speech
--mode raw`` and used by the cache and the pipeline like any SpeechAE.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from readtalk.errors import ReadtalkError
from readtalk.layers import CausalConv1d, CausalResBlock1d, ChannelNorm1d
from readtalk.media import SAMPLES_PER_FRAME
from readtalk.release import load_release, release_path

TIME_FACTOR = 8  # the VAE's temporal compression
SPEECHAE_KIND = "readtalk.speechae"  # release file kind


@dataclass(frozen=True)
class SpeechAEConfig:
    feat_dim: int = 768  # input width per video frame (Whisper-tiny: 2 x 384)
    hidden: int = 256
    code_dim: int = 64
    blocks: int = 1  # residual blocks per resolution
    front_end: str = "whisper-tiny"  # which features it was trained on (checked at load)
    kind: str = "ae"  # ae: the autoencoder | raw: no network, stacked raw features (ablation)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


SPEECHAE_SIZES: dict[str, SpeechAEConfig] = {
    "debug": SpeechAEConfig(hidden=32, code_dim=8, blocks=1),
    "small": SpeechAEConfig(hidden=256, code_dim=64, blocks=1),
    "base": SpeechAEConfig(hidden=512, code_dim=128, blocks=2),
}


def num_codes(frames: int) -> int:
    """Latent frames for ``frames`` video frames (8k+1 -> k+1)."""
    if frames < 1 or (frames - 1) % TIME_FACTOR:
        raise ReadtalkError(f"speech needs 8k+1 frames (e.g. 113 or 121), got {frames}")
    return 1 + (frames - 1) // TIME_FACTOR


class SpeechAE(nn.Module):
    def __init__(self, cfg: SpeechAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        # Standardisation of the input features, set from training data (see set_stats).
        self.register_buffer("feat_mean", torch.zeros(cfg.feat_dim))
        self.register_buffer("feat_std", torch.ones(cfg.feat_dim))
        if cfg.kind not in ("ae", "raw"):
            raise ReadtalkError(f"unknown SpeechAE kind {cfg.kind!r} (known: ae, raw)")
        if cfg.kind == "raw":
            if cfg.code_dim != TIME_FACTOR * cfg.feat_dim:
                raise ReadtalkError(
                    f"a raw SpeechAE has code_dim = {TIME_FACTOR} x feat_dim = "
                    f"{TIME_FACTOR * cfg.feat_dim}, got {cfg.code_dim}"
                )
            return
        self.proj_in = nn.Linear(cfg.feat_dim, h)
        enc: list[nn.Module] = []
        for _ in range(3):
            enc += [CausalResBlock1d(h) for _ in range(cfg.blocks)]
            enc.append(CausalConv1d(h, h, kernel=2, stride=2))  # causal 2x down-sampling
        enc += [CausalResBlock1d(h) for _ in range(cfg.blocks)]
        enc += [ChannelNorm1d(h), nn.SiLU(), CausalConv1d(h, cfg.code_dim, kernel=1)]
        self.encoder = nn.Sequential(*enc)
        self.code_in = CausalConv1d(cfg.code_dim, h, kernel=1)
        self.dec_blocks = nn.ModuleList(
            [nn.Sequential(*[CausalResBlock1d(h) for _ in range(cfg.blocks)]) for _ in range(4)]
        )
        # each up-sampling maps one step to two: a causal conv to 2h channels, then unfold
        self.ups = nn.ModuleList([CausalConv1d(h, 2 * h, kernel=2) for _ in range(3)])
        self.proj_out = nn.Sequential(ChannelNorm1d(h), nn.SiLU(), CausalConv1d(h, cfg.feat_dim, 1))

    # -- standardisation ----------------------------------------------------------------------
    @torch.no_grad()
    def set_stats(self, feats: torch.Tensor) -> None:
        """Set the input standardisation from training features (N, feat_dim)."""
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0).clamp_min(1e-4))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feat_mean) / self.feat_std

    # -- the two halves -----------------------------------------------------------------------
    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, F, feat_dim) raw features, F = 8k+1 -> (B, k+1, code_dim) codes."""
        Fr, D = feats.shape[1:]
        if self.cfg.feat_dim != D:
            raise ReadtalkError(f"SpeechAE expects {self.cfg.feat_dim}-d features, got {D}")
        num_codes(Fr)
        if self.cfg.kind == "raw":
            x = self.standardize(feats).transpose(1, 2)  # (B, D, F)
            x = F.pad(x, (TIME_FACTOR - 1, 0), mode="replicate").transpose(1, 2)  # (B, F+7, D)
            return x.reshape(x.shape[0], -1, TIME_FACTOR * D)  # (B, f, 8 D)
        x = self.proj_in(self.standardize(feats)).transpose(1, 2)  # (B, h, F)
        x = F.pad(x, (TIME_FACTOR - 1, 0), mode="replicate")  # (B, h, F+7): frame 0 alone
        return self.encoder(x).transpose(1, 2)  # (B, f, code_dim)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, f, code_dim) -> (B, 8(f-1)+1, feat_dim) standardised features."""
        if self.cfg.kind == "raw":
            raise ReadtalkError("a raw SpeechAE (ablation) has no decoder")
        x = self.code_in(codes.transpose(1, 2))  # (B, h, f)
        for blocks, up in zip(self.dec_blocks[:-1], self.ups, strict=True):
            x = blocks(x)
            y = up(x)  # (B, 2h, T): step t -> outputs 2t, 2t+1, from inputs <= t
            B, C2, T = y.shape
            x = y.view(B, 2, C2 // 2, T).permute(0, 2, 3, 1).reshape(B, C2 // 2, 2 * T)
        x = self.dec_blocks[-1](x)  # (B, h, 8f)
        x = self.proj_out(x)[:, :, TIME_FACTOR - 1 :]  # drop the padding: (B, feat_dim, F)
        return x.transpose(1, 2)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes and the standardised reconstruction of ``feats``."""
        codes = self.encode(feats)
        return codes, self.decode(codes)


def speechae_losses(
    model: SpeechAE, feats: torch.Tensor, temperature: float = 0.1
) -> dict[str, torch.Tensor]:
    """MSE on standardised features + frame-level InfoNCE within each clip.

    ``feats``: (B, F, feat_dim) raw features. InfoNCE: for each clip, logits[i, j] is the
    cosine similarity of reconstructed frame i and original frame j over ``temperature``; the
    target of row i is j = i.
    """
    target = model.standardize(feats)
    _, recon = model(feats)
    mse = F.mse_loss(recon, target)
    r = F.normalize(recon, dim=-1)
    t = F.normalize(target, dim=-1)
    logits = torch.einsum("bid,bjd->bij", r, t) / temperature  # (B, F, F)
    labels = torch.arange(feats.shape[1], device=feats.device).expand(feats.shape[0], -1)
    nce = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    return {"mse": mse, "nce": nce}


@torch.no_grad()
def retrieval_accuracy(model: SpeechAE, feats: torch.Tensor) -> float:
    """Fraction of frames whose reconstruction is closest (cosine) to its own original among
    all frames of its clip."""
    target = model.standardize(feats)
    _, recon = model(feats)
    sim = torch.einsum(
        "bid,bjd->bij", F.normalize(recon, dim=-1), F.normalize(target, dim=-1)
    )  # (B, F, F)
    hits = sim.argmax(-1) == torch.arange(feats.shape[1], device=feats.device)
    return float(hits.float().mean())


@torch.no_grad()
def window_codes(
    model: SpeechAE, front_end, audio: np.ndarray, start: int, frames: int
) -> torch.Tensor:
    """Speech codes (1, f, code_dim), float32 on the model's device, of video frames
    [start, start + frames) of 16-kHz mono ``audio`` (silence past its end).

    The front-end features are computed over the window's own audio: Whisper's features depend
    on where a frame sits in its 30-s window, so the latent cache (training) and the generation
    pipeline (inference) both call this, and features computed once for a whole long recording
    would not match them.
    """
    spf = SAMPLES_PER_FRAME
    window = np.zeros(frames * spf, np.float32)
    piece = audio[start * spf : (start + frames) * spf]
    window[: len(piece)] = piece
    feats = front_end.video_features(window, frames).reshape(1, frames, -1)  # (1, F, 2 dim)
    device = model.feat_mean.device  # a raw SpeechAE has no parameters, only its statistics
    return model.encode(feats.to(device, torch.float32)).float()


def load_speechae(path: str | os.PathLike) -> SpeechAE:
    """A trained SpeechAE from its release file (or a run folder holding one)."""
    tensors, meta = load_release(release_path(path, "speechae.safetensors"), SPEECHAE_KIND)
    cfg = SpeechAEConfig(**json.loads(meta["config"]))
    model = SpeechAE(cfg)
    model.load_state_dict(tensors)
    return model.eval()
