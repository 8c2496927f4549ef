"""The adversarial terms of frame-decoder training: a patch discriminator, its hinge loss,
feature matching on its own features, an image-gradient term, and VQGAN's adaptive weight.

Why: L1 alone makes a decoder draw the mean of everything a latent could hold, which is a blur
(the demo decoder keeps a tenth of the truth's Laplacian variance; docs/results.md section 5).
A discriminator trained from scratch penalises exactly that, needs no pretrained network (none
ships here for LPIPS), and the terms below keep it in check:

* ``hinge``: the discriminator's loss ``relu(1 - D(x)) + relu(1 + D(G(z)))`` and the
  generator's ``-D(G(z))`` (Lim & Ye 2017; SAGAN, VQGAN);
* feature matching: L1 between the discriminator's features of the reconstruction and of the
  input (pix2pixHD), a dense signal that does not collapse when the discriminator wins;
* gradient term: L1 between the finite differences of reconstruction and input, weighted like
  the reconstruction, so edges are asked for where they are, not only somewhere;
* adaptive weight (Esser et al. 2021, VQGAN): the adversarial term is scaled by
  ``|grad_last rec| / |grad_last adv|`` at the decoder's last layer, so it pulls as hard as the
  reconstruction whatever their scales, and only after ``start`` optimiser steps.

One backward pass trains both networks: the generator's terms go through the discriminator
with its parameters detached (``torch.func.functional_call``), the discriminator's through the
reconstruction detached, so their gradients never mix. Both live in one module (``GANPair``)
so checkpoints, resume and EMA cover the discriminator too; their gradients are clipped
separately (``GANPair.clip_grad_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from readtalk.errors import ReadtalkError


@dataclass(frozen=True)
class GANConfig:
    weight: float = 0.0  # adversarial weight (times the adaptive weight); 0: no discriminator
    start: int = 0  # optimiser steps before the generator feels the adversarial term
    adaptive: bool = True  # VQGAN's adaptive weight (else ``weight`` alone)
    max_adaptive: float = 100.0  # clamp of the adaptive weight
    fm_weight: float = 0.0  # feature matching (L1 on the discriminator's features)
    grad_weight: float = 0.0  # L1 on the image gradients (finite differences)
    width: int = 32  # the discriminator's first width (doubling per layer, at most 8x)
    layers: int = 3  # stride-2 layers (a 128-px input then gives 14x14 patch logits)
    ema_decay: float = 0.0  # EMA of the decoder (and discriminator) weights; 0: none

    def validate(self) -> None:
        if min(self.weight, self.fm_weight, self.grad_weight, self.start) < 0:
            raise ReadtalkError("gan.weight, gan.fm_weight, gan.grad_weight, gan.start: >= 0")
        if self.width < 1 or not 1 <= self.layers <= 5:
            raise ReadtalkError(
                f"gan.width must be >= 1 and gan.layers in 1..5, got {self.width}, {self.layers}"
            )
        if not 0.0 <= self.ema_decay < 1.0 or self.max_adaptive <= 0:
            raise ReadtalkError("gan.ema_decay must lie in [0, 1) and gan.max_adaptive be > 0")

    @property
    def enabled(self) -> bool:
        return self.weight > 0 or self.fm_weight > 0


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: 4x4 convolutions, ``layers`` of stride 2, GroupNorm and LeakyReLU,
    then a stride-1 layer and one logit per patch. ``forward`` gives the logits and every
    hidden layer's activations (for feature matching)."""

    def __init__(self, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        chans = [3] + [width * min(2**i, 8) for i in range(layers + 1)]
        blocks = []
        for i in range(layers + 1):
            stride = 2 if i < layers else 1
            conv = nn.Conv2d(chans[i], chans[i + 1], 4, stride, 1)
            norm = nn.GroupNorm(min(8, chans[i + 1]), chans[i + 1]) if i else nn.Identity()
            blocks.append(nn.Sequential(conv, norm, nn.LeakyReLU(0.2)))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(chans[-1], 1, 4, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return self.head(x), feats


class GANPair(nn.Module):
    """The decoder's VAE and the discriminator, one module for the training loop (checkpoint,
    resume, EMA and DDP see both)."""

    def __init__(self, vae: nn.Module, disc: PatchDiscriminator) -> None:
        super().__init__()
        self.vae, self.disc = vae, disc

    def clip_grad_norm(self, max_norm: float) -> Tensor:
        """Clip each player's gradient on its own (a discriminator far from balance can have
        gradients tens of times the decoder's; clipped together, the decoder would stall).
        Returns the decoder's norm, which the training log shows."""
        norm = nn.utils.clip_grad_norm_(self.vae.parameters(), max_norm)
        nn.utils.clip_grad_norm_(self.disc.parameters(), max_norm)
        return norm


def frames_of(video: Tensor) -> Tensor:
    """(B, C, F, H, W) -> (B * F, C, H, W)."""
    b, c, f, h, w = video.shape
    return video.transpose(1, 2).reshape(b * f, c, h, w)


def hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()


def feature_matching(real: list[Tensor], fake: list[Tensor]) -> Tensor:
    return torch.stack(
        [(f - r.detach()).abs().mean() for r, f in zip(real, fake, strict=True)]
    ).mean()


def gradient_l1(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Mean L1 between the horizontal and vertical finite differences of (N, C, H, W) images,
    weighted per pixel by ``weight`` (N, 1, H, W; None: uniform)."""
    loss = pred.new_zeros(())
    for dim in (-1, -2):
        d = (pred.diff(dim=dim) - target.diff(dim=dim)).abs()
        if weight is None:
            loss = loss + d.mean()
        else:
            w = weight.narrow(dim, 1, weight.shape[dim] - 1)
            loss = loss + (d * w).mean() / w.mean()
    return loss / 2


def adaptive_weight(rec: Tensor, adv: Tensor, layer: Tensor, max_weight: float) -> Tensor:
    """VQGAN's ``|d rec / d layer| / (|d adv / d layer| + 1e-4)``, detached and clamped."""
    g_rec = torch.autograd.grad(rec, layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def adversarial_losses(
    cfg: GANConfig,
    disc: PatchDiscriminator,
    recon: Tensor,
    target: Tensor,
    rec_loss: Tensor,
    last_layer: Tensor,
    step: int,
) -> dict[str, Tensor]:
    """The discriminator's terms of one step for (B, 3, F, H, W) reconstructions and inputs in
    [-1, 1]: ``total`` (the generator's terms plus the discriminator's loss, to add to the
    reconstruction loss and minimise in one backward pass) and each term for the log. The
    gradient term (``gradient_l1``, ``cfg.grad_weight``) is the caller's: it needs no
    discriminator."""
    fake, real = frames_of(recon), frames_of(target)
    out: dict[str, Tensor] = {}
    total = recon.new_zeros(())
    real_logits, real_feats = disc(real)
    fake_logits_d, _ = disc(fake.detach())
    out["d_loss"] = hinge_d(real_logits, fake_logits_d)
    out["d_real"] = real_logits.detach().mean()
    out["d_fake"] = fake_logits_d.detach().mean()
    frozen = {n: p.detach() for n, p in disc.named_parameters()}
    fake_logits, fake_feats = functional_call(disc, frozen, (fake,))
    if cfg.fm_weight:
        out["fm"] = feature_matching(real_feats, fake_feats)
        total = total + cfg.fm_weight * out["fm"]
    if cfg.weight and step >= cfg.start:
        out["adv"] = -fake_logits.mean()
        scale = cfg.weight
        if cfg.adaptive and torch.is_grad_enabled():
            scale = scale * adaptive_weight(rec_loss, out["adv"], last_layer, cfg.max_adaptive)
        out["adv_scale"] = torch.as_tensor(scale, dtype=recon.dtype).detach()
        total = total + scale * out["adv"]
    out["total"] = total + out["d_loss"]
    return out
