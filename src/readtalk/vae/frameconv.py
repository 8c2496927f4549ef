"""Single-frame fast path for the LTX video VAE's causal 3D convolutions.

The factorised VAE (``readtalk.vae.factorised``) runs the video VAE on one frame at a time:
frame VAE training, the packer's and the cache's encoding, and every frame decoded at
generation. With one frame, LTX pads time by repeating that frame, so a ``kt x kh x kw``
convolution sees ``kt`` copies of the same frame and its output is exactly a 2D convolution of
the frame with the kernel summed over time. That costs ``1/kt`` of the 3D convolution (a third
for LTX's 3x3x3 kernels), and its gradient with respect to each temporal tap is the 2D kernel's
gradient, the same as the 3D convolution gives. Same weights, same checkpoints, same results up
to float rounding; clips of more than one frame take the 3D path unchanged.

``use_frame_path(ae)`` switches every causal convolution and spatio-temporal downsampler of a
diffusers ``AutoencoderKLLTXVideo`` to these subclasses in place (their parameters and state
dict keys are those of the originals); ``VideoVAE`` does so for every VAE it builds. Without
gradients the time-summed kernel is computed once per weight version and reused.
``docs/experiments/bench_frame_path.py`` times both paths (docs/speed.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_ltx import (
    LTXVideoCausalConv3d,
    LTXVideoDownsampler3d,
)
from torch import Tensor, nn


class FrameCausalConv3d(LTXVideoCausalConv3d):
    """``LTXVideoCausalConv3d`` that convolves a one-frame input in 2D (see module doc)."""

    def forward(self, hidden_states: Tensor) -> Tensor:
        conv = self.conv
        if (
            hidden_states.shape[2] != 1
            or conv.padding_mode != "zeros"
            or conv.dilation[0] != 1
            or self.kernel_size[0] % 2 == 0  # non-causal padding assumes an odd kernel
        ):
            return super().forward(hidden_states)
        out = F.conv2d(
            hidden_states[:, :, 0],
            self._frame_kernel(),
            conv.bias,
            stride=conv.stride[1:],
            padding=conv.padding[1:],
            groups=conv.groups,
        )
        return out.unsqueeze(2)

    def _frame_kernel(self) -> Tensor:
        """The kernel summed over time. Without gradients (generation) it is computed once and
        kept until the weight changes (an optimiser step or ``load_state_dict`` bumps the
        tensor's version, ``.to()`` gives it new storage). In float32 on an AVX2 CPU this
        saves nothing measurable (docs/speed.md: frames are decoded 16 per call); with fast
        bf16 convolutions caching it made the decoder 1.47x faster (cpu-profile notes)."""
        w = self.conv.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return w.sum(dim=2)
        # weights made under ``torch.inference_mode`` (a model loaded or cast there) have no
        # version counter; they cannot change outside it, so their storage is the key
        version = -1 if w.is_inference() else w._version
        key = (w.data_ptr(), version, w.dtype, w.device)
        hit = self.__dict__.get("_kernel_cache")
        if hit is None or hit[0] != key:
            hit = (key, w.detach().sum(dim=2))
            self.__dict__["_kernel_cache"] = hit  # a plain attribute: not in the state dict
        return hit[1]


class FrameDownsampler3d(LTXVideoDownsampler3d):
    """``LTXVideoDownsampler3d`` whose one-frame input is convolved once, not once per copy.

    With one frame and a temporal stride of 2, the downsampler prepends a copy of the frame
    before its causal convolution, whose two outputs are then both the one-frame output.
    """

    def forward(self, hidden_states: Tensor) -> Tensor:
        st = self.stride[0]
        if hidden_states.shape[2] != 1 or st != 2:  # (one frame with st > 2 fails in the original)
            return super().forward(hidden_states)
        padded = hidden_states.expand(-1, -1, 2, -1, -1)  # what the original's cat builds
        residual = self._to_channels(padded).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return self._to_channels(self.conv(hidden_states).expand(-1, -1, 2, -1, -1)) + residual

    def _to_channels(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, C * st * sh * sw, T / st, H / sh, W / sw), as the original."""
        st, sh, sw = self.stride
        x = x.unflatten(4, (-1, sw)).unflatten(3, (-1, sh)).unflatten(2, (-1, st))
        return x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(1, 4)


_FAST = {LTXVideoCausalConv3d: FrameCausalConv3d, LTXVideoDownsampler3d: FrameDownsampler3d}


def use_frame_path(ae: nn.Module, on: bool = True) -> nn.Module:
    """Switch ``ae``'s causal convolutions and downsamplers to the one-frame fast path, in place
    (``on=False``: back to LTX's own modules, e.g. to time or check one against the other)."""
    swap = _FAST if on else {fast: slow for slow, fast in _FAST.items()}
    for module in ae.modules():
        if type(module) in swap:
            module.__class__ = swap[type(module)]
    return ae
