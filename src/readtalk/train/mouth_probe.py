"""The mouth's directions in the latent space, and a DiT loss term that weighs them
(``diffusion.mouth_weight``).

The speech the DiT hears tells the mouth well: a small network on the same Whisper features
predicts SynthTalk's lip gap at r = 0.93 on held-out clips, and the DiT's own projected speech
tokens hold it linearly at r = 0.83. The latents hold it too (a linear read-out at r = 0.93).
Yet the DiT's generated videos sync at 0.70-0.74 (docs/results.md, section 8, "Where the lip
sync goes"): the mouth is a few directions of a 2,048-value latent, so the flow loss, a mean
over every value, hardly asks for it.

``fit_mouth_probe`` finds those directions: a ridge regression, on the cache's training windows,
from a normalised latent (C x h x w) to the lip gaps of its 8 frames (the cache's ``gap``,
SynthTalk ground truth), its 8 columns scaled to unit length. ``mouth_loss`` is then the
velocity error projected onto them: the mean over the loss frames of
``|| P^T (v - v_target) ||^2 / 8``. Its target is the data's own velocity (eps - z0), so the
term's minimiser is the flow loss's (a projection of the conditional mean), and ``mouth_weight``
only shifts the model's effort toward the mouth. An error spread evenly over the latent costs the
same per value in both terms, so at weight 1 the 8 mouth directions weigh as much as all 2,048
values of the flow loss together.

Measured on the distilled demo DiT it lowered lip sync, and on a data-target DiT sampled with
Split-CFG it left it where it was (docs/results.md section 8, "The mouth's directions in the
loss"): a tool for experiments and for watching ``ema_mouth``, not a recipe.
"""

from __future__ import annotations

import torch
from torch import Tensor

from readtalk.errors import ReadtalkError

__all__ = [
    "fit_mouth_probe",
    "latent_gap_pairs",
    "mouth_loss",
    "probe_from_cache",
    "probe_gaps",
    "ridge_readout",
]

TEMPORAL_FACTOR = 8
MIN_LATENTS = 16  # latents with a complete lip-gap track needed to fit the probe
MAX_WINDOWS = 4096  # training windows the probe is fitted on (evenly spaced), for memory


def latent_gap_pairs(latent: Tensor, gap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Latent frames j >= 1 of every window, flattened (n, C h w), their 8 frames' gaps (n, 8),
    and which of the N (f - 1) latents they are (bool ``keep``: latents with a NaN gap are left
    out); latent j covers the window's frames [8j - 7, 8j + 1)."""
    f = latent.shape[2]
    x = latent[:, :, 1:].transpose(1, 2).flatten(2).flatten(0, 1)  # (N (f - 1), C h w)
    need = 1 + TEMPORAL_FACTOR * (f - 1)
    if gap.shape[1] < need:
        raise ReadtalkError(f"the cache holds {gap.shape[1]} gap frames a window, need {need}")
    y = gap[:, 1:need].reshape(-1, f - 1, TEMPORAL_FACTOR).flatten(0, 1)  # (N (f - 1), 8)
    keep = ~torch.isnan(y).any(dim=1)
    return x[keep], y[keep], keep


def ridge_readout(x: Tensor, y: Tensor, ridge: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """A ridge regression of ``y`` (n, k) on ``x`` (n, D), the inputs standardised and the
    penalty ``ridge`` per sample: ``(w, x_mean, y_mean)`` with ``y ~ (x - x_mean) w + y_mean``,
    ``w`` (D, k) on the unstandardised inputs."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    a = (x - mu) / sd
    gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype)
    ym = y.mean(0)
    return torch.linalg.solve(gram, a.T @ (y - ym)) / sd[:, None], mu, ym


@torch.no_grad()
def fit_mouth_probe(latent: Tensor, gap: Tensor, ridge: float = 0.01) -> Tensor:
    """(C h w, 8) unit columns: the directions of a normalised latent that predict its 8
    frames' lip gaps. ``latent`` (N, C, f, h, w) normalised training latents; ``gap`` (N,
    frames) their lip gaps (NaN where unknown). ``ridge``: the penalty per sample on
    standardised inputs."""
    x, y, _ = latent_gap_pairs(latent.double(), gap.double())
    if len(x) < MIN_LATENTS:
        raise ReadtalkError(
            f"diffusion.mouth_weight needs lip-gap ground truth in the cache (SynthTalk "
            f"tracks): {len(x)} latents have it, need {MIN_LATENTS}"
        )
    if float(y.std()) == 0.0:
        raise ReadtalkError("diffusion.mouth_weight: the cache's lip gaps never change")
    w = ridge_readout(x, y, ridge)[0]
    return (w / w.norm(dim=0, keepdim=True).clamp_min(1e-12)).float()


def probe_from_cache(data, max_windows: int = MAX_WINDOWS) -> Tensor:
    """``fit_mouth_probe`` on at most ``max_windows`` windows of a ``CachedLatents``, evenly
    spaced (all of them when there are fewer), normalised with the cache's statistics."""
    n = len(data)
    idx = torch.arange(n) if n <= max_windows else torch.linspace(0, n - 1, max_windows).long()
    return fit_mouth_probe(data.normalize(data.latent[idx]), data.gap[idx])


def probe_gaps(latent: Tensor, probe: Tensor) -> Tensor:
    """(B, f, 8): each latent frame of (B, C, f, h, w) projected on the probe's directions."""
    return latent.transpose(1, 2).flatten(2) @ probe.to(latent)


def mouth_loss(pred: Tensor, target: Tensor, probe: Tensor, frame_mask: Tensor) -> Tensor:
    """Mean over the frames in ``frame_mask`` (B, f) of the velocity error ``pred - target``
    (B, C, f, h, w) projected on the probe, squared, per direction."""
    err = probe_gaps(pred.float() - target.float(), probe).pow(2).mean(-1)  # (B, f)
    w = frame_mask.to(err)
    return (err * w).sum() / w.sum().clamp_min(1.0)
