"""The portrait refiner: the frame decoder's detail, copied from the portrait instead of invented.

A frame decoder that sees 8x8x32 numbers per 256-pixel frame cannot draw eyes, hair and skin
texture it was never given (reconstruction sharpness 0.09 of the truth's; docs/results.md).
Generation always has the portrait, and the portrait holds that detail. The refiner takes it
from there:

* ``r``: the portrait in pixels, and ``r0``: the portrait through the frame VAE (encoded and
  decoded alone, so blurred exactly as the decoder blurs). ``r - r0`` is the detail the decoder
  loses on this face.
* For a decoded frame ``y`` (blurred the same way), a small U-Net at 1/``scale`` resolution
  compares ``y`` with ``r0`` (like with like: both blurred) and predicts a flow from ``y`` to the
  portrait and two masks (where the portrait's detail and the portrait itself apply: not in an
  open mouth, which the portrait does not have).
* ``out = (1 - b) * (y + a * warp(r - r0)) + b * warp(r)``: ``a`` adds the portrait's detail to
  the decoded frame, ``b`` takes the portrait itself where nothing moved but the decoder got it
  wrong (background, hair). Both masks and the flow come from the U-Net; nothing is convolved
  at full resolution, so the refiner costs a fraction of the frame decoder.

At initialisation the flow is zero, ``a`` is 0.2 and ``b`` 0.02, so the refiner starts as "add a
fifth of the portrait's detail where it is", and learns the rest from the frames. It changes
neither the latents nor the DiT: a VAE with a refiner decodes the same latents, and without a
portrait (``reference=None``) it decodes exactly as without a refiner.

Cost at the defaults (width 16, 1/4 resolution): 0.17 GFLOP and about 2.6 ms per 256-pixel
frame on a 2-core CPU, in torch under both runtimes (docs/stage1.md, "Copying the portrait's
detail").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from readtalk.errors import ReadtalkError

DETAIL_BIAS = -1.4  # sigmoid: 0.2 of the portrait's detail at initialisation
IMAGE_BIAS = -4.0  # sigmoid: 0.02 of the portrait itself
FLOW_RANGE = 0.25  # the largest flow, in units of the frame's half-width (tanh-bounded)


@dataclass(frozen=True)
class Reference:
    """A portrait prepared for refining (1 or B rows): ``pair`` (B, 6, H, W), the portrait in
    [-1, 1] and its detail (the portrait minus its frame-VAE round trip), and ``small``: the
    round trip at the flow network's resolution."""

    pair: Tensor
    small: Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> Reference:
        return Reference(self.pair.to(device, dtype), self.small.to(device, dtype))

    def rows(self, repeats: int) -> Reference:
        """Each row repeated ``repeats`` times (one portrait for each of a row's frames)."""
        return Reference(*(t.repeat_interleave(repeats, 0) for t in (self.pair, self.small)))


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class Refiner(nn.Module):
    """``forward(y, ref)``: decoded frames (N, 3, H, W) in [-1, 1] and a ``Reference`` -> the
    refined frames (N, 3, H, W), not clamped. ``width``: the flow network's channels;
    ``scale``: its resolution divisor (H and W must be multiples of ``4 * scale``)."""

    def __init__(self, width: int = 16, scale: int = 4) -> None:
        super().__init__()
        if width < 1 or scale < 1:
            raise ReadtalkError(f"refiner sizes must be >= 1, got width {width}, scale {scale}")
        w = width
        self.scale = scale
        self.e1 = nn.Sequential(_conv(9, w), nn.SiLU(), _conv(w, w), nn.SiLU())
        self.e2 = nn.Sequential(_conv(w, 2 * w, 2), nn.SiLU(), _conv(2 * w, 2 * w), nn.SiLU())
        self.e3 = nn.Sequential(_conv(2 * w, 2 * w, 2), nn.SiLU(), _conv(2 * w, 2 * w), nn.SiLU())
        self.d2 = nn.Sequential(_conv(4 * w, 2 * w), nn.SiLU())
        self.d1 = nn.Sequential(_conv(3 * w, w), nn.SiLU())
        self.head = _conv(w, 4)  # flow (2), detail and image mask logits
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.tensor([0.0, 0.0, DETAIL_BIAS, IMAGE_BIAS]))

    def check_size(self, height: int, width: int) -> None:
        m = 4 * self.scale
        if height % m or width % m:
            raise ReadtalkError(f"the refiner needs frame sizes that are multiples of {m}")

    def small(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.scale) if self.scale > 1 else x

    def prepare(self, image: Tensor, blurred: Tensor) -> Reference:
        """A portrait (B, 3, H, W) and its frame-VAE round trip -> ``Reference``."""
        if image.shape != blurred.shape or image.dim() != 4 or image.shape[1] != 3:
            raise ReadtalkError(
                f"a reference is two (B, 3, H, W) images, got {tuple(image.shape)} and "
                f"{tuple(blurred.shape)}"
            )
        self.check_size(*image.shape[2:])
        return Reference(torch.cat([image, image - blurred], dim=1), self.small(blurred))

    def motion(self, y: Tensor, ref: Reference) -> Tensor:
        """(N, 4, h, w) at the flow network's resolution: the flow from a frame to the portrait
        (2 channels, grid units) and the detail and image masks (2 channels, in [0, 1])."""
        ys = self.small(y)
        rs = ref.small.expand(ys.shape[0], -1, -1, -1)
        # channels-last activations: the small convolutions run 1.35x faster on the CPU
        x = torch.cat([ys, rs, ys - rs], dim=1).contiguous(memory_format=torch.channels_last)
        h1 = self.e1(x)
        h2 = self.e2(h1)
        h3 = self.e3(h2)
        u2 = self.d2(torch.cat([F.interpolate(h3, size=h2.shape[2:]), h2], dim=1))
        u1 = self.d1(torch.cat([F.interpolate(u2, size=h1.shape[2:]), h1], dim=1))
        out = self.head(u1).contiguous()
        return torch.cat([FLOW_RANGE * torch.tanh(out[:, :2]), torch.sigmoid(out[:, 2:])], dim=1)

    def forward(self, y: Tensor, ref: Reference) -> Tensor:
        n, _, h, w = y.shape
        if ref.pair.shape[2:] != (h, w):
            raise ReadtalkError(
                f"the reference is {tuple(ref.pair.shape[2:])} pixels, the frames {(h, w)}"
            )
        # upsampled after the activations: the full-resolution work is one interpolation, one
        # warp and two blends (docs/stage1.md: 1.4 of the 3.7 ms a frame it took before)
        up = F.interpolate(self.motion(y, ref), size=(h, w), mode="bilinear", align_corners=False)
        grid = up[:, :2].permute(0, 2, 3, 1) + _base_grid(
            h, w, y.device, y.dtype, torch.is_inference_mode_enabled()
        )  # (N, H, W, 2), contiguous
        pair = ref.pair.expand(n, -1, -1, -1)
        warped = F.grid_sample(
            pair, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        detailed = torch.addcmul(y, up[:, 2:3], warped[:, 3:])
        return torch.lerp(detailed, warped[:, :3], up[:, 3:])


@functools.lru_cache(maxsize=8)
def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype, inference: bool) -> Tensor:
    """The identity sampling grid (H, W, 2) of ``grid_sample`` (x, y; pixel centres); one per
    inference mode, as inference-mode tensors may not enter autograd."""
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=device, dtype=dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
