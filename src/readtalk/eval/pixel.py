"""Pixel-level fidelity: PSNR and SSIM between videos or images.

Inputs are float tensors in [0, 1] shaped (..., 3, H, W) (frames stacked in the leading axes);
both metrics are computed per frame and averaged. SSIM follows Wang et al. (2004): an 11x11
Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, on each RGB channel,
averaged — the same definition as scikit-image's ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _frames(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, H, W), got {tuple(x.shape)}")
    return x.reshape(-1, 3, *x.shape[-2:]).float()


def psnr(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-10) -> float:
    """Mean over frames of 10 log10(1 / MSE)."""
    a, b = _frames(a), _frames(b)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / (mse + eps))).mean())


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM over frames and channels (valid region, no padding)."""
    a, b = _frames(a), _frames(b)
    g = _gaussian().to(a)
    kx = g.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    ky = g.view(1, 1, -1, 1).expand(3, 1, -1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kx, groups=3), ky, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(s.mean())
