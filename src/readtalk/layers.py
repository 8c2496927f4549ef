"""Primitives shared by more than one network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Module):
    """1-D convolution over time that sees only the present and the past.

    The input is left-padded by ``(kernel - 1) * dilation`` copies of its first step (replicate
    padding, as LTX-Video's causal 3-D convolutions do), so output t depends on inputs <= t and a
    constant prefix does not look like an edge. With ``stride`` s, output t covers inputs up to
    s * t + s - 1.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        if self.pad:
            x = F.pad(x, (self.pad, 0), mode="replicate")
        return self.conv(x)


class ChannelNorm1d(nn.LayerNorm):
    """LayerNorm over channels at each time step of (B, C, T). Unlike GroupNorm, whose
    statistics pool over time, it keeps a causal network causal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class CausalResBlock1d(nn.Module):
    """norm -> SiLU -> causal conv, twice, with a residual connection."""

    def __init__(self, channels: int, kernel: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ChannelNorm1d(channels),
            nn.SiLU(),
            CausalConv1d(channels, channels, kernel, dilation=dilation),
            ChannelNorm1d(channels),
            nn.SiLU(),
            CausalConv1d(channels, channels, kernel),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        return x + self.net(x)
