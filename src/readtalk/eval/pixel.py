"""Pixel-level fidelity: PSNR, SSIM and sharpness between videos or images.

Inputs are float tensors in [0, 1] shaped (..., 3, H, W) (frames stacked in the leading axes);
PSNR and SSIM are computed per frame and averaged. SSIM follows Wang et al. (2004): an 11x11
Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, on each RGB channel,
averaged — the same definition as scikit-image's ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``.

Sharpness (``sharpness_ratio``) is the variance of the 3x3 Laplacian of the luma, generated over
true (1.0: as much fine detail as the truth, < 1 blurred, > 1 noisier), optionally inside a pixel
box per frame (the mouth, the eyes). Blur costs a face its detail while barely moving PSNR: a
decoder that averages over what it is unsure of scores well on PSNR and looks smeared. The
sharpness functions also take uint8 (..., H, W, 3) numpy frames.
"""

from __future__ import annotations

import numpy as np
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


# ------------------------------------------------------------------------------------ sharpness

LUMA = (0.299, 0.587, 0.114)  # BT.601, as the mouth reader's luma
_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
_CHUNK = 16  # frames converted to float at a time


def _luma(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) numpy or float (..., 3, H, W) in [0, 1] -> (N, H, W) float luma
    in [0, 1]."""
    w = torch.tensor(LUMA)
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 (..., H, W, 3) frames, got {frames.dtype} {frames.shape}"
            )
        x = torch.from_numpy(np.ascontiguousarray(frames)).reshape(-1, *frames.shape[-3:])
        return x.float().div(255) @ w
    return torch.einsum("nchw,c->nhw", _frames(frames), w.to(frames.device))


def _frame_count(frames: np.ndarray | torch.Tensor) -> int:
    lead = frames.shape[:-3]
    return int(np.prod(lead)) if lead else 1


def _boxes(boxes, n: int) -> np.ndarray:
    """(4,), (F, 4) or (F, K, 4) -> int (F, K, 4)."""
    b = np.asarray(boxes)
    if b.ndim == 1:
        b = np.broadcast_to(b, (n, 4))
    if b.ndim == 2:
        b = b[:, None]
    if b.ndim != 3 or b.shape[2] != 4:
        raise ValueError(f"boxes must be (4,), (F, 4) or (F, K, 4), got {b.shape}")
    if len(b) < n:
        raise ValueError(f"{len(b)} frames of boxes for {n} frames")
    return np.round(b[:n]).astype(np.int64)


def laplacian_variance(
    frames: np.ndarray | torch.Tensor, boxes: np.ndarray | None = None
) -> np.ndarray:
    """Per-frame variance of the 3x3 Laplacian (``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]``, OpenCV's
    ``Laplacian(ksize=1)``; Pech-Pacheco et al. 2000) of the luma (BT.601, in [0, 1] units).

    ``frames``: uint8 (..., H, W, 3) numpy or float (..., 3, H, W) in [0, 1] torch (as ``psnr``).
    The Laplacian is taken where its 3x3 neighbourhood lies inside the frame (no padding, like
    ``ssim``). ``boxes``: pixel boxes ``(x0, y0, x1, y1)`` (end exclusive), one for every frame
    ((4,)), one per frame ((F, 4)) or several per frame ((F, K, 4): the variance is over the
    pixels of all K together); a box counts the pixels whose 3x3 neighbourhood lies inside it
    (and inside the frame). A frame whose boxes hold no such pixel gives NaN.

    Returns float64 (F,). Blur lowers it; noise and over-sharpening raise it."""

    n = _frame_count(frames)
    flat = frames.reshape(n, *frames.shape[-3:])
    b = None if boxes is None else _boxes(boxes, n)
    out = np.full(n, np.nan)
    for i0 in range(0, n, _CHUNK):
        y = _luma(flat[i0 : i0 + _CHUNK])[:, None]  # (n, 1, H, W)
        k = torch.tensor(_LAPLACIAN, dtype=y.dtype, device=y.device).view(1, 1, 3, 3)
        lap = F.conv2d(y, k)[:, 0].double()  # (n, H-2, W-2): pixel (y+1, x+1) at [y, x]
        if b is None:
            out[i0 : i0 + len(lap)] = lap.flatten(1).var(1, correction=0).cpu().numpy()
            continue
        H, W = y.shape[-2:]
        for j, frame in enumerate(lap):
            vals = []
            for x0, y0, x1, y1 in b[i0 + j]:
                x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
                if x1 - x0 >= 3 and y1 - y0 >= 3:
                    vals.append(frame[y0 : y1 - 2, x0 : x1 - 2].flatten())
            if vals:
                out[i0 + j] = float(torch.cat(vals).var(correction=0))
    return out


def variance_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    """The ratio of the means over frames, ``mean(pred) / mean(truth)``, over the frames where
    both are defined: one flat truth frame (variance near 0) cannot blow it up the way a mean of
    per-frame ratios would. NaN when no frame is defined or the truth is flat throughout."""

    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"per-frame variances differ in shape: {pred.shape} vs {truth.shape}")
    keep = np.isfinite(pred) & np.isfinite(truth)
    if not keep.any() or truth[keep].mean() <= 0:
        return float("nan")
    return float(pred[keep].mean() / truth[keep].mean())


def sharpness_ratio(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    boxes: np.ndarray | None = None,
) -> float:
    """Detail of ``pred`` relative to ``truth`` (the same frames, the same layout as
    ``laplacian_variance``): ``variance_ratio`` of their per-frame Laplacian variances, inside
    ``boxes`` when given (the same boxes for both). 1.0: as detailed as the truth (exactly 1.0
    for identical frames); < 1: blurred (0.14: seven times less detail); > 1: noisier or
    over-sharpened."""

    if _frame_count(pred) != _frame_count(truth):
        raise ValueError(f"pred has {_frame_count(pred)} frames and truth {_frame_count(truth)}")
    return variance_ratio(laplacian_variance(pred, boxes), laplacian_variance(truth, boxes))
