"""The one-frame fast path of the VAE's convolutions (readtalk.vae.frameconv): the same outputs
and gradients as LTX's 3D convolutions, which clips of several frames still use."""

import dataclasses

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_ltx import (
    LTXVideoCausalConv3d,
    LTXVideoDownsampler3d,
)

from readtalk.vae.config import get_preset
from readtalk.vae.frameconv import FrameCausalConv3d, FrameDownsampler3d, use_frame_path
from readtalk.vae.model import VideoVAE

TINY_RES = dataclasses.replace(  # residual resampling: the spatio-temporal downsamplers
    get_preset("debug"),
    name="tiny-res",
    block_out_channels=(8, 16, 32, 64),
    decoder_block_out_channels=(16, 32, 64),
    residual=True,
)
CONFIGS = {
    "debug": get_preset("debug"),
    "residual": TINY_RES,
    "non-causal decoder": dataclasses.replace(get_preset("debug"), decoder_causal=False),
}


def _original(vae: VideoVAE) -> VideoVAE:
    """A copy of ``vae`` with LTX's own 3D modules back in place."""
    ref = VideoVAE(vae.config)
    ref.load_state_dict(vae.state_dict())
    use_frame_path(ref.ae, on=False)
    kinds = {type(m) for m in ref.ae.modules()}
    assert FrameCausalConv3d not in kinds and FrameDownsampler3d not in kinds
    return ref


def _run(vae: VideoVAE, x: torch.Tensor):
    vae.zero_grad()
    mean, logvar = vae.encode_dist(x)
    out = vae.decode(mean)
    (out.square().mean() + mean.abs().mean()).backward()
    grads = {k: p.grad.clone() for k, p in vae.named_parameters() if p.grad is not None}
    return mean.detach(), logvar.detach(), out.detach(), grads


@pytest.mark.parametrize("name", CONFIGS)
def test_one_frame_matches_the_3d_convolutions_with_gradients(name):
    torch.manual_seed(0)
    vae = VideoVAE(CONFIGS[name])
    kinds = {type(m) for m in vae.ae.modules()}
    assert LTXVideoCausalConv3d not in kinds and FrameCausalConv3d in kinds
    if name == "residual":
        assert FrameDownsampler3d in kinds and LTXVideoDownsampler3d not in kinds
    ref = _original(vae)
    x = torch.rand(2, 3, 1, 64, 64) * 2 - 1
    fast, slow = _run(vae, x), _run(ref, x)
    for a, b in zip(fast[:3], slow[:3], strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert fast[3].keys() == slow[3].keys() and len(fast[3]) == len(list(vae.parameters()))
    for k, g in fast[3].items():  # float rounding only: within 1e-4 of the gradient's scale
        want = slow[3][k]
        assert (g - want).abs().max() <= 1e-4 * want.abs().max() + 1e-9, k


def test_clips_of_several_frames_take_the_3d_path_unchanged():
    torch.manual_seed(1)
    vae = VideoVAE(TINY_RES)
    ref = _original(vae)
    x = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae.encode(x), ref.encode(x))
        z = ref.encode(x)
        assert torch.equal(vae.decode(z), ref.decode(z))


def test_the_fast_path_keeps_the_checkpoint_format(tmp_path):
    vae = VideoVAE("debug")
    ref = _original(vae)
    assert list(vae.state_dict()) == list(ref.state_dict())
    path = vae.save(tmp_path / "vae.safetensors")
    loaded = VideoVAE.load(path)
    assert any(type(m) is FrameCausalConv3d for m in loaded.ae.modules())
    x = torch.rand(1, 3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), vae.encode(x))


def test_a_vae_loaded_under_inference_mode_decodes_frames(tmp_path):
    """Weights made under ``torch.inference_mode`` (loaded or cast there) have no version
    counter; the cached time-summed kernel must not need one."""
    path = VideoVAE("debug").save(tmp_path / "vae.safetensors")
    x = torch.rand(2, 3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = VideoVAE.load(path).decode(VideoVAE.load(path).encode(x))
    with torch.inference_mode():
        vae = VideoVAE.load(path).float()
        assert next(vae.parameters()).is_inference()
        torch.testing.assert_close(vae.decode(vae.encode(x)), expected)
