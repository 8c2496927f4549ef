"""The temporal VAE: shapes, input checks, exact piece-wise coding, checkpoint formats, training."""

import dataclasses
import json
import os
import socket

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from readtalk.errors import ReadtalkError
from readtalk.vae.codec import READTALK_FORMAT, kl_loss
from readtalk.vae.config import VAE_PRESETS, VAEConfig, get_preset
from readtalk.vae.model import VideoVAE

# The ltx layout (same modules, same key names, 128 latent channels) at 1/16 of the width.
LTX_MINI = dataclasses.replace(
    VAE_PRESETS["ltx"], name="ltx-mini", block_out_channels=(8, 16, 32, 32)
)


@pytest.fixture(autouse=True, scope="module")
def _offline_on_one_thread():
    """One CPU thread, and any network connection (a hub download) fails the test."""

    def no_network(*args, **kwargs):
        raise AssertionError("the VAE tried to open a network connection")

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def debug_vae():
    torch.manual_seed(0)
    return VideoVAE("debug").eval()


def _video(frames, height=32, width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1  # (B, 3, F, H, W)


def _perturbed(config: VAEConfig, seed: int = 1) -> VideoVAE:
    """A model with random statistics too, so that loading them is tested as well."""
    torch.manual_seed(seed)
    vae = VideoVAE(config).eval()
    c = config.latent_channels
    vae.set_latent_stats(torch.randn(c), torch.rand(c) + 0.5)
    return vae


# ------------------------------------------------------------------------------------ presets


def test_presets_compress_32_by_32_by_8():
    for name, config in VAE_PRESETS.items():
        assert (config.spatial_factor, config.temporal_factor) == (32, 8), name
    assert get_preset("ltx").latent_shape(121, 512, 512) == (128, 16, 16, 16)
    assert get_preset("debug").latent_shape(1, 64, 96) == (8, 1, 2, 3)
    with pytest.raises(ReadtalkError, match=r"unknown VAE preset 'huge'.*debug"):
        get_preset("huge")


def test_preset_sizes():
    counts = {n: VideoVAE(n, meta=True).num_parameters() for n in VAE_PRESETS}
    assert counts["debug"] <= 100_000
    assert 1_000_000 < counts["small"] < 5_000_000
    assert counts["small"] < counts["base"] < 20_000_000
    assert counts["ltx"] == 419_193_649
    assert counts["res-small"] < counts["res-base"] < 30_000_000
    # the 128-channel latent costs only the layers next to it
    assert counts["res-small"] < counts["res-small-c128"] < 1.2 * counts["res-small"]
    assert get_preset("res-small-c128").latent_shape(57, 256, 256) == (128, 8, 8, 8)
    assert VAE_PRESETS["small"].latent_channels == 32
    assert not VAE_PRESETS["ltx"].decoder_causal and VAE_PRESETS["small"].decoder_causal


def test_ltx_preset_is_the_official_0_9_0_layout():
    """Same tensors and shapes as diffusers' defaults (= its 0.9.0 conversion config), and the
    original LTX-Video names of those tensors have the shapes the original modules give them."""
    from diffusers import AutoencoderKLLTXVideo
    from diffusers.loaders.single_file_utils import (
        convert_ltx_vae_checkpoint_to_diffusers,
        infer_diffusers_model_type,
    )

    with torch.device("meta"):
        reference = AutoencoderKLLTXVideo()
    ours = VideoVAE("ltx", meta=True).ae.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    assert VAEConfig.from_diffusers(dict(reference.config)).same_layout(VAE_PRESETS["ltx"])

    original = _to_original_ltx(ours, VAE_PRESETS["ltx"])
    assert infer_diffusers_model_type(original) == "ltx-video"  # 0.9.0, not 0.9.1+
    expected = {  # shapes that follow from Lightricks' causal_video_autoencoder.py
        "vae.encoder.conv_in.conv.weight": (128, 48, 3, 3, 3),
        "vae.encoder.down_blocks.1.conv.weight": (128, 128, 3, 3, 3),
        "vae.encoder.down_blocks.2.conv_shortcut.weight": (256, 128, 1, 1, 1),
        "vae.encoder.down_blocks.2.norm3.norm.weight": (128,),
        "vae.encoder.down_blocks.9.res_blocks.3.conv2.conv.weight": (512, 512, 3, 3, 3),
        "vae.encoder.conv_out.conv.weight": (129, 512, 3, 3, 3),  # 128 means + 1 shared logvar
        "vae.decoder.conv_in.conv.weight": (512, 128, 3, 3, 3),
        "vae.decoder.up_blocks.2.conv.conv.weight": (4096, 512, 3, 3, 3),
        "vae.decoder.up_blocks.4.conv_shortcut.weight": (256, 512, 1, 1, 1),
        "vae.decoder.up_blocks.9.res_blocks.3.conv2.conv.weight": (128, 128, 3, 3, 3),
        "vae.decoder.conv_out.conv.weight": (48, 128, 3, 3, 3),
        "vae.per_channel_statistics.std-of-means": (128,),
    }
    assert {k: tuple(original[k].shape) for k in expected} == expected
    back = convert_ltx_vae_checkpoint_to_diffusers(dict(original))
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in ours.items()}


# ---------------------------------------------------------------------------- shapes and checks


@pytest.mark.parametrize("frames", [1, 9, 17, 33])
@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_shapes(debug_vae, frames, size):
    h, w = size
    video = _video(frames, h, w)
    with torch.no_grad():
        mean, logvar = debug_vae.encode_dist(video)
        latent = debug_vae.encode(video)
        out = debug_vae.decode(latent)
    assert mean.shape == logvar.shape == latent.shape == (1, *debug_vae.latent_shape(frames, h, w))
    assert latent.shape == (1, 8, 1 + (frames - 1) // 8, h // 32, w // 32)
    assert torch.equal(latent, mean)
    assert out.shape == video.shape and out.abs().max() <= 1
    # LTX's "uniform" log-variance: one value per position, shared by the channels
    assert torch.equal(logvar, logvar[:, :1].expand_as(logvar))


def test_sampling_and_training_forward(debug_vae):
    video = _video(9)
    g = torch.Generator().manual_seed(3)
    a = debug_vae.encode(video, sample=True, generator=g)
    b = debug_vae.encode(video, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, debug_vae.encode(video))
    out = debug_vae(video, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.latent, a) and out.recon.shape == video.shape
    assert kl_loss(out.mean, out.logvar) > 0
    assert kl_loss(torch.zeros(2, 3), torch.zeros(2, 3)) == 0


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 8, 32, 32), r"8 frames; the VAE takes 8k\+1 frames \(e.g. 1 or 9\)"),
        ((1, 3, 10, 32, 32), r"10 frames; .*\(e.g. 9 or 17\)"),
        ((1, 3, 120, 32, 32), r"120 frames; .*\(e.g. 113 or 121\)"),
        ((1, 3, 9, 100, 32), r"height 100 is not a multiple of 32 \(e.g. 96 or 128\)"),
        ((1, 3, 9, 32, 16), r"width 16 is not a multiple of 32 \(e.g. 32\)"),
        ((3, 9, 32, 32), r"\(B, 3, F, H, W\) tensor, got \(3, 9, 32, 32\)"),
        ((1, 4, 9, 32, 32), r"\(B, 3, F, H, W\) tensor"),
    ],
)
def test_bad_video_is_refused_before_any_convolution(debug_vae, shape, message, monkeypatch):
    def no_conv(*args, **kwargs):
        raise AssertionError("a convolution ran before the input check")

    monkeypatch.setattr(torch.nn.modules.conv.F, "conv3d", no_conv)
    with pytest.raises(ReadtalkError, match=message) as e:
        debug_vae.encode(torch.zeros(shape))
    assert "\n" not in str(e.value)


def test_bad_values_and_latents(debug_vae):
    video = _video(9)
    video[0, 0, 3, 5, 5] = float("nan")
    with pytest.raises(ReadtalkError, match="NaN or infinite"):
        debug_vae.encode(video)
    with pytest.raises(ReadtalkError, match=r"\[-1, 1\].*0\.\.255"):
        debug_vae.encode(_video(9).add(1).mul(127.5).round())
    with pytest.raises(ReadtalkError, match="must be float"):
        debug_vae.encode(torch.zeros(1, 3, 9, 32, 32, dtype=torch.uint8))
    with pytest.raises(ReadtalkError, match=r"latent must be a \(B, 8, f, h, w\) tensor"):
        debug_vae.decode(torch.zeros(1, 16, 2, 1, 1))
    with pytest.raises(ReadtalkError, match="NaN or infinite"):
        debug_vae.decode(torch.full((1, 8, 2, 1, 1), float("inf")))
    assert debug_vae.latent_shape(121, 32, 32) == (8, 16, 1, 1)  # 121 frames is fine ...
    with pytest.raises(ReadtalkError, match="120 frames"):  # ... 120 is not
        debug_vae.latent_shape(120, 32, 32)


def test_config_validation_and_json():
    with pytest.raises(ReadtalkError, match="one entry per block plus one"):
        VAEConfig("x", 8, (8, 8), (1, 1), (True, True))
    with pytest.raises(ReadtalkError, match="same factor"):
        VAEConfig("x", 8, (8,), (1, 1), (True,), decoder_spatio_temporal_scaling=(False,))
    for config in [*VAE_PRESETS.values(), LTX_MINI]:
        assert VAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ReadtalkError, match="unknown VAE config field"):
        VAEConfig.from_dict({**VAE_PRESETS["debug"].to_dict(), "colour": "blue"})


# ------------------------------------------------------------------------ pieces of long videos


def test_pieced_decode_equals_full_decode(debug_vae):
    config = debug_vae.config
    latent = torch.randn(1, 8, 37, 1, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = debug_vae.decode(latent, clamp=False)  # (1, 3, 289, 32, 32)
        runs = list(debug_vae.iter_decode(latent, piece=5, clamp=False))
        short = debug_vae.decode_pieces(latent, piece=5, context=config.decoder_context - 1)
    assert [r.shape[2] for r in runs] == [33] + [40] * 6 + [16]
    pieced = torch.cat(runs, dim=2)
    assert pieced.shape == full.shape == (1, 3, 289, 32, 32)
    torch.testing.assert_close(pieced, full, rtol=0, atol=1e-5)
    # The default context is the decoder's whole reach: one latent frame less is visibly wrong.
    assert (short - full.clamp(-1, 1)).abs().max() > 1e-3
    torch.testing.assert_close(
        debug_vae.decode(latent, piece=3), full.clamp(-1, 1), atol=1e-5, rtol=0
    )


def test_decode_after_a_prefix_continues_the_sequence(debug_vae):
    """A clip's latents decoded after the latents before them (a long video made clip by clip)
    give exactly the frames the whole sequence decodes to: 8 per latent, no first frame."""
    config = debug_vae.config
    latent = torch.randn(1, 8, 30, 1, 1, generator=torch.Generator().manual_seed(3))
    a = 20
    with torch.no_grad():
        full = debug_vae.decode(latent)  # (1, 3, 233, 32, 32)
        runs = list(debug_vae.iter_decode(latent[:, :, a:], prefix=latent[:, :, :a], piece=4))
        cont = torch.cat(runs, dim=2)
        # the context it needs is the decoder's reach; a much shorter one is visibly wrong
        short = torch.cat(
            list(debug_vae.iter_decode(latent[:, :, a:], prefix=latent[:, :, a - 2 : a])), 2
        )
        alone = debug_vae.decode(latent[:, :, a:])
    assert a > config.decoder_context and cont.shape[2] == 8 * (30 - a)
    torch.testing.assert_close(cont, full[:, :, config.frames_for(a) :], rtol=0, atol=1e-5)
    assert (short - cont).abs().max() > 1e-3
    assert alone.shape[2] == 1 + 8 * (30 - a - 1)  # without a prefix: the first-frame rule
    with pytest.raises(ReadtalkError, match="does not match"):
        debug_vae.iter_decode(latent[:, :, a:], prefix=torch.zeros(1, 8, 2, 2, 1))
    with pytest.raises(ReadtalkError, match="latent must be"):
        debug_vae.iter_decode(latent[:, :, a:], prefix=torch.zeros(1, 4, 2, 1, 1))
    nc = VideoVAE(dataclasses.replace(config, name="nc", decoder_causal=False))
    with pytest.raises(ReadtalkError, match="causal decoder"):
        nc.iter_decode(latent[:, :, a:], prefix=latent[:, :, :a])


def test_pieced_decode_of_a_non_causal_decoder_uses_both_sides():
    config = dataclasses.replace(VAE_PRESETS["debug"], name="nc", decoder_causal=False)
    assert config.decoder_context < VAE_PRESETS["debug"].decoder_context
    torch.manual_seed(0)
    vae = VideoVAE(config).eval()
    latent = torch.randn(1, 8, 30, 1, 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = vae.decode(latent)
        pieced = vae.decode_pieces(latent, piece=4)
        short = vae.decode_pieces(latent, piece=4, context=config.decoder_context - 2)
    torch.testing.assert_close(pieced, full, rtol=0, atol=1e-5)
    assert (short - full).abs().max() > 1e-3


def test_pieced_encode_equals_full_encode(debug_vae):
    video = _video(1 + 8 * 30, seed=4)
    with torch.no_grad():
        mean, logvar = debug_vae.encode_dist(video)
        pm, plv = debug_vae.encode_pieces(video, piece=4)
        short, _ = debug_vae.encode_pieces(
            video, piece=4, context=debug_vae.config.encoder_context - 1
        )
    assert pm.shape == mean.shape == (1, 8, 31, 1, 1)
    torch.testing.assert_close(pm, mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(plv, logvar, rtol=0, atol=1e-5)
    assert (short - mean).abs().max() > 1e-4
    with pytest.raises(ReadtalkError, match="piece must be at least 1"):
        debug_vae.encode_pieces(video, piece=0)
    with pytest.raises(ReadtalkError, match="context must not be negative"):
        debug_vae.iter_decode(mean, context=-1)  # raised on the call, before iterating


# ------------------------------------------------------------------------------ checkpoint files


def test_release_round_trip(tmp_path):
    vae = _perturbed(VAE_PRESETS["debug"])
    path = vae.save(tmp_path / "ckpt" / "vae.safetensors", metadata={"step": 12})
    assert not list(path.parent.glob(".*partial*"))
    back = VideoVAE.load(path)
    assert back.config == vae.config
    assert back.ae.state_dict().keys() == vae.ae.state_dict().keys()
    for k, v in vae.ae.state_dict().items():
        assert torch.equal(back.ae.state_dict()[k], v), k
    video = _video(9)
    with torch.no_grad():
        assert torch.equal(back.decode(back.encode(video)), vae.decode(vae.encode(video)))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == READTALK_FORMAT and meta["step"] == "12"
    assert json.loads(meta["config"])["decoder_block_out_channels"] == [8, 8, 8]
    # normalisation uses the stored statistics and inverts exactly
    z = torch.randn(2, 8, 3, 1, 2)
    torch.testing.assert_close(back.denormalize(back.normalize(z)), z)
    assert not torch.allclose(back.normalize(z), z)
    assert torch.equal(back.scaling.mean, vae.ae.latents_mean)
    assert VideoVAE.from_pretrained(path).config == vae.config  # self-describing


def _same_outputs(a: VideoVAE, b: VideoVAE) -> None:
    assert a.config.same_layout(b.config)
    for k, v in a.ae.state_dict().items():
        assert torch.equal(b.ae.state_dict()[k], v), k
    video = _video(9)
    with torch.no_grad():
        za, zb = a.encode(video), b.encode(video)
        assert torch.equal(za, zb)
        assert torch.equal(a.decode(za), b.decode(zb))
        assert torch.equal(a.normalize(za), b.normalize(zb))


def test_from_pretrained_diffusers_folder(tmp_path):
    source = _perturbed(LTX_MINI)
    source.ae.save_pretrained(tmp_path / "vae_only")
    _same_outputs(source, VideoVAE.from_pretrained(tmp_path / "vae_only"))
    source.ae.save_pretrained(tmp_path / "pipeline" / "vae")  # a pipeline folder
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    loaded = VideoVAE.from_pretrained(tmp_path / "pipeline", preset="debug")  # config.json wins
    _same_outputs(source, loaded)
    assert loaded.config.name == "custom"
    # a folder of a preset's layout is named after it
    _perturbed(VAE_PRESETS["debug"]).ae.save_pretrained(tmp_path / "dbg")
    assert VideoVAE.from_pretrained(tmp_path / "dbg").config.name == "debug"


def test_from_pretrained_original_ltx_single_file(tmp_path):
    source = _perturbed(LTX_MINI)
    original = _to_original_ltx(source.ae.state_dict(), LTX_MINI)
    whole = {
        **original,
        "model.diffusion_model.patchify_proj.weight": torch.zeros(4, 4),  # the transformer
        "model.diffusion_model.transformer_blocks.27.scale_shift_table": torch.zeros(6, 4),
    }
    meta = {"config": json.dumps({"vae": {"_class_name": "CausalVideoAutoencoder"}})}
    save_file({k: v.to(torch.bfloat16) for k, v in whole.items()}, tmp_path / "m.safetensors", meta)
    loaded = VideoVAE.from_pretrained(tmp_path / "m.safetensors", preset=LTX_MINI)
    assert loaded.dtype == torch.float32
    rounded = {k: v.to(torch.bfloat16).float() for k, v in source.ae.state_dict().items()}
    _same_outputs(VideoVAE._from_state_dict(LTX_MINI, rounded, "bf16 source", None), loaded)

    # a standalone VAE file in the original layout (no "vae." prefix), float32
    standalone = {k.removeprefix("vae."): v for k, v in original.items()}
    save_file(standalone, tmp_path / "vae.safetensors")
    _same_outputs(source, VideoVAE.from_pretrained(tmp_path / "vae.safetensors", preset=LTX_MINI))
    # ... and the original repo's folder form of it (config.json of CausalVideoAutoencoder)
    folder = tmp_path / "orig"
    folder.mkdir()
    save_file(standalone, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "CausalVideoAutoencoder"}))
    _same_outputs(source, VideoVAE.from_pretrained(folder, preset=LTX_MINI))
    # a diffusers-layout state dict saved as one file also works
    save_file(source.ae.state_dict(), tmp_path / "d.safetensors")
    _same_outputs(source, VideoVAE.from_pretrained(tmp_path / "d.safetensors", preset=LTX_MINI))


def test_wrong_files_are_refused_in_one_line(tmp_path):
    cases = []
    cases.append((tmp_path / "missing.safetensors", "not found"))
    (tmp_path / "text.safetensors").write_text("hello, not a tensor file")
    cases.append((tmp_path / "text.safetensors", "not a safetensors file"))
    save_file(
        {"model.diffusion_model.transformer_blocks.0.attn1.to_q.weight": torch.zeros(2, 2)},
        tmp_path / "transformer.safetensors",
    )
    cases.append((tmp_path / "transformer.safetensors", "no VAE weights.*transformer"))
    save_file({"foo": torch.zeros(2)}, tmp_path / "other.safetensors")
    cases.append((tmp_path / "other.safetensors", "no VAE weights"))
    debug = _perturbed(VAE_PRESETS["debug"])
    save_file(debug.ae.state_dict(), tmp_path / "small_as_ltx.safetensors")
    cases.append((tmp_path / "small_as_ltx.safetensors", "does not match the 'ltx' VAE layout"))
    original = _to_original_ltx(_perturbed(LTX_MINI).ae.state_dict(), LTX_MINI)
    save_file(original, tmp_path / "mini_as_ltx.safetensors")
    cases.append((tmp_path / "mini_as_ltx.safetensors", r"of other shape \(e.g. "))
    newer = {**original, "vae.decoder.last_scale_shift_table": torch.zeros(2, 8)}
    save_file(newer, tmp_path / "v091.safetensors")
    cases.append((tmp_path / "v091.safetensors", r"0\.9\.1\+ VAE"))
    (tmp_path / "empty_dir").mkdir()
    cases.append((tmp_path / "empty_dir", "no config.json"))
    (tmp_path / "tdir").mkdir()
    (tmp_path / "tdir" / "config.json").write_text('{"_class_name": "LTXVideoTransformer3DModel"}')
    cases.append((tmp_path / "tdir", "not an AutoencoderKLLTXVideo"))
    for path, message in cases:
        with pytest.raises(ReadtalkError, match=message) as e:
            VideoVAE.from_pretrained(path)
        assert "\n" not in str(e.value), path
    with pytest.raises(ReadtalkError, match="not a readtalk VAE checkpoint"):
        VideoVAE.load(tmp_path / "other.safetensors")
    with pytest.raises(ReadtalkError, match=r"0\.9\.1"):
        VAEConfig.from_diffusers({"timestep_conditioning": True})


# ----------------------------------------------------------------------------------- training


def test_a_few_steps_reduce_reconstruction_loss():
    torch.manual_seed(0)
    vae = VideoVAE("debug").train()
    video = _video(9, 32, 32, seed=5).mul(0.8)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = vae(video, sample=False)
        loss = (out.recon - video).abs().mean()
        opt.zero_grad()
        (loss + 1e-6 * kl_loss(out.mean, out.logvar)).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# --------------------------------------------------------------------------------- full size


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("READTALK_SLOW"), reason="set READTALK_SLOW=1 (1.7 GB)")
def test_full_size_ltx_round_trip(tmp_path):
    source = _perturbed(VAE_PRESETS["ltx"])
    source.ae.save_pretrained(tmp_path / "vae")
    _same_outputs(source, VideoVAE.from_pretrained(tmp_path / "vae"))
    save_file(_to_original_ltx(source.ae.state_dict(), VAE_PRESETS["ltx"]), tmp_path / "o.sft")
    _same_outputs(source, VideoVAE.from_pretrained(tmp_path / "o.sft"))


# ------------------------------------------------------------------------------------ helpers


def _to_original_ltx(state: dict, config: VAEConfig) -> dict:
    """diffusers keys -> the original LTX-Video 0.9.0 names, written from Lightricks' module tree.

    The original ``Encoder.down_blocks`` / ``Decoder.up_blocks`` are flat lists: a ``res_x``
    (``UNetMidBlock3D``, with ``res_blocks``), a ``compress_all`` conv, a ``res_x_y`` bare
    ``ResnetBlock3D`` (whose shortcut is a plain Conv3d and whose ``norm3`` wraps a LayerNorm as
    ``.norm``); the decoder lists them from the latent side, the mid block first. Latent
    statistics live in ``per_channel_statistics`` with more buffers than diffusers keeps.
    """
    prefixes = {}
    n = len(config.block_out_channels)
    i = 0
    for b in range(n):
        prefixes[f"encoder.down_blocks.{b}.resnets."] = f"encoder.down_blocks.{i}.res_blocks."
        i += 1
        if config.spatio_temporal_scaling[b]:
            prefixes[f"encoder.down_blocks.{b}.downsamplers.0."] = f"encoder.down_blocks.{i}."
            i += 1
        if b + 1 < n and config.block_out_channels[b + 1] != config.block_out_channels[b]:
            prefixes[f"encoder.down_blocks.{b}.conv_out."] = f"encoder.down_blocks.{i}."
            i += 1
    prefixes["encoder.mid_block.resnets."] = f"encoder.down_blocks.{i}.res_blocks."
    prefixes["decoder.mid_block.resnets."] = "decoder.up_blocks.0.res_blocks."
    chans = config.decoder_channels[::-1]
    i, ch = 1, chans[0]
    for b, out in enumerate(chans):
        if out != ch:
            prefixes[f"decoder.up_blocks.{b}.conv_in."] = f"decoder.up_blocks.{i}."
            i += 1
        ch = out
        if config.decoder_scaling[::-1][b]:
            prefixes[f"decoder.up_blocks.{b}.upsamplers.0."] = f"decoder.up_blocks.{i}."
            i += 1
        prefixes[f"decoder.up_blocks.{b}.resnets."] = f"decoder.up_blocks.{i}.res_blocks."
        i += 1
    out = {}
    c, device = config.latent_channels, state["latents_mean"].device
    for key, value in state.items():
        if key == "latents_mean":
            out["vae.per_channel_statistics.mean-of-means"] = value
            continue
        if key == "latents_std":
            out["vae.per_channel_statistics.std-of-means"] = value
            continue
        new = key
        for old, repl in prefixes.items():
            if key.startswith(old):
                new = repl + key[len(old) :]
                break
        new = new.replace("conv_shortcut.conv.", "conv_shortcut.").replace("norm3.", "norm3.norm.")
        out["vae." + new] = value
    for extra in ("mean-of-stds", "mean-of-stds_over_std-of-means", "channel"):
        out[f"vae.per_channel_statistics.{extra}"] = torch.ones(c, device=device)
    return out


# ------------------------------------------------------------------ residual (LTX 0.9.5) blocks

RES_DEBUG = VAEConfig(
    name="res-debug",
    latent_channels=8,
    block_out_channels=(8, 8, 16, 16),
    decoder_block_out_channels=(8, 16, 32),
    layers_per_block=(1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, True),
    residual=True,
)


def test_residual_layout_shapes_and_exact_pieces():
    torch.manual_seed(0)
    vae = VideoVAE(RES_DEBUG).eval()
    blocks = [type(b).__name__ for b in vae.ae.encoder.down_blocks]
    assert blocks == ["LTXVideo095DownBlock3D"] * 3
    assert VideoVAE("res-small", meta=True).config.residual
    video = _video(1 + 8 * 12, seed=5)
    with torch.no_grad():
        mean, _ = vae.encode_dist(video)
        assert mean.shape == (1, 8, 13, 1, 1)
        pm, _ = vae.encode_pieces(video, piece=3)
        torch.testing.assert_close(pm, mean, rtol=0, atol=1e-5)
        latent = torch.randn(1, 8, 21, 1, 1, generator=torch.Generator().manual_seed(3))
        full = vae.decode(latent, clamp=False)
        pieced = torch.cat(list(vae.iter_decode(latent, piece=4, clamp=False)), dim=2)
    assert full.shape == (1, 3, 161, 32, 32)
    torch.testing.assert_close(pieced, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(decoder_block_out_channels=None), "needs decoder_block_out_channels"),
        (dict(decoder_block_out_channels=(8, 24, 32)), "must double"),
        (dict(block_out_channels=(8, 12, 16, 16)), "need b % 8 == 0"),
        (dict(spatio_temporal_scaling=(True, True, False)), "must resample"),
    ],
)
def test_residual_layout_is_checked(change, message):
    with pytest.raises(ReadtalkError, match=message):
        dataclasses.replace(RES_DEBUG, **change)


def test_residual_release_round_trip(tmp_path):
    vae = _perturbed(RES_DEBUG)
    vae.save(tmp_path / "vae.safetensors")
    loaded = VideoVAE.load(tmp_path / "vae.safetensors").eval()
    assert loaded.config == RES_DEBUG
    _same_outputs(vae, loaded)
