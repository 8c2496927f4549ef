"""The factorised VAE (frame VAE + temporal packer) and its training stage, at debug sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from readtalk.cli import main
from readtalk.errors import ReadtalkError
from readtalk.train.optim import OptimConfig
from readtalk.train.packer import (
    LATENTS,
    PackerRunConfig,
    _saved_latents,
    group_loss,
    train_packer,
)
from readtalk.vae.config import get_preset
from readtalk.vae.factorised import FactorisedConfig, FactorisedVAE, Packer, load_vae
from readtalk.vae.model import VideoVAE

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fvae():
    torch.manual_seed(0)
    frame = get_preset("debug")
    return FactorisedVAE(
        FactorisedConfig(frame=frame, channels=frame.latent_channels, width=16)
    ).eval()


def _video(frames=17, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


@torch.no_grad()
def test_shapes_and_the_first_latent_is_frame_zero(fvae):
    x = _video(17)
    z = fvae.encode(x)
    c = fvae.latent_channels
    assert z.shape == (1, c, 3, 2, 2) and fvae.latent_shape(17, 64, 64) == (c, 3, 2, 2)
    # latent 0 is frame 0's standardised single-frame latent, untouched by the packer
    alone = fvae.frame.encode(x[:, :, :1])[:, :, 0]
    assert torch.allclose(z[:, :, 0], fvae._std(alone), atol=1e-5)
    y = fvae.decode(z)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert fvae.config.frames_for(3) == 17 and fvae.temporal_factor == 8
    assert fvae.spatial_factor == 32


@torch.no_grad()
def test_decoding_in_pieces_equals_the_whole(fvae):
    z = fvae.encode(_video(33))
    whole = fvae.decode(z)
    for piece in (1, 2, 3):
        runs = list(fvae.iter_decode(z, piece=piece))
        assert sum(r.shape[2] for r in runs) == 33
        assert torch.allclose(torch.cat(runs, dim=2), whole, atol=1e-5)


@torch.no_grad()
def test_decoding_after_a_prefix(fvae):
    z = fvae.encode(_video(41))  # 6 latents
    runs = list(fvae.iter_decode(z[:, :, 4:], prefix=z[:, :, :4]))
    assert sum(r.shape[2] for r in runs) == 16  # 8 frames per latent, no single first frame
    # only the last ``decoder_context`` prefix latents matter
    again = list(fvae.iter_decode(z[:, :, 4:], prefix=z[:, :, 2:4]))
    assert torch.allclose(torch.cat(runs, 2), torch.cat(again, 2), atol=1e-6)
    # with a prefix the packer continues from the prefix's last decoded frame, not from nothing
    bare = list(fvae.iter_decode(z[:, :, 4:], prefix=z[:, :, 2:4], context=0))
    assert not torch.allclose(torch.cat(runs, 2), torch.cat(bare, 2), atol=1e-4)
    with pytest.raises(ReadtalkError, match="does not match"):
        list(fvae.iter_decode(z[:, :, 4:], prefix=z[:, :, :2, :1]))
    # with a state carried from the first call, the second continues exactly from the frame
    # the first one showed: the two calls equal one decode of the whole sequence
    state: dict = {}
    head = list(fvae.iter_decode(z[:, :, :4], state=state))
    tail = list(fvae.iter_decode(z[:, :, 4:], prefix=z[:, :, :4], state=state))
    assert torch.allclose(torch.cat(head + tail, 2), fvae.decode(z), atol=1e-5)


def test_context_flag_and_dropout_mask():
    torch.manual_seed(0)
    p = Packer(c=4, k=4, width=8, group=8)
    z, prev = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    none = p.decode(z, None)
    masked = p.decode(z, prev, torch.tensor([False, True, False]))
    assert torch.allclose(none[0], masked[0]) and torch.allclose(none[2], masked[2])
    assert not torch.allclose(none[1], masked[1])


def test_bad_inputs_are_one_line_errors(fvae):
    with pytest.raises(ReadtalkError, match="8k\\+1"):
        fvae.encode(_video(16))
    with pytest.raises(ReadtalkError, match="multiple of 32"):
        fvae.encode(torch.zeros(1, 3, 9, 48, 64))
    late = _video(17)
    late[:, :, 12] = float("nan")  # every frame is checked, not only the first
    with pytest.raises(ReadtalkError, match="NaN"):
        fvae.encode(late)
    with pytest.raises(ReadtalkError, match=r"\[-1, 1\]"):
        fvae.encode(_video(17) * 3)
    with pytest.raises(ReadtalkError, match="deterministic"):
        fvae.encode(_video(9), sample=True)
    with pytest.raises(ReadtalkError, match="latent must be"):
        fvae.decode(torch.zeros(1, fvae.latent_channels + 1, 2, 2, 2))
    with pytest.raises(ReadtalkError, match="channels"):
        FactorisedConfig(frame=get_preset("debug"), channels=5)


@torch.no_grad()
def test_release_round_trip_and_load_vae(fvae, tmp_path):
    fvae.set_latent_stats(torch.full((8,), 0.5), torch.full((8,), 2.0))
    path = fvae.save(tmp_path / "f.safetensors")
    back = load_vae(path)
    assert isinstance(back, FactorisedVAE) and back.config == fvae.config
    z = fvae.encode(_video(9))
    assert torch.equal(back.decode(z), fvae.decode(z))
    assert torch.allclose(back.denormalize(back.normalize(z)), z, atol=1e-6)
    assert isinstance(load_vae(VideoVAE("debug").save(tmp_path / "v.safetensors")), VideoVAE)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ReadtalkError, match="not a safetensors"):
        load_vae(tmp_path / "bad.safetensors")
    with pytest.raises(ReadtalkError, match="not found"):
        load_vae(tmp_path / "missing.safetensors")
    fvae.set_latent_stats(torch.zeros(8), torch.ones(8))


def test_deviation_loss_penalises_one_mean_frame():
    x = torch.randn(2, 8, 4, 2, 2)
    still = x.mean(1, keepdim=True).expand_as(x)
    assert group_loss(still, x, 16.0)["dev"] > 0.5
    assert group_loss(x, x, 16.0)["loss"] == 0


def _cfg(data, vae, steps, lr=1e-3, **kw):
    tc = dict(steps=steps, batch_size=4, lr=lr, warmup=1, eval_every=steps, ckpt_every=2,
              log_every=1, threads=1)  # fmt: skip
    base = dict(width=8, clips=2, window=17, eval_clips=1, eval_frames=17)
    return PackerRunConfig(data=str(data), vae=str(vae), train=OptimConfig(**tc), **{**base, **kw})


@pytest.fixture(scope="module")
def frame_vae(tmp_path_factory):
    torch.manual_seed(0)
    return VideoVAE("debug").save(tmp_path_factory.mktemp("fv") / "vae.safetensors")


def test_packer_training_resumes_exactly_and_writes_a_release(synth_dataset, frame_vae, tmp_path):
    full = train_packer(_cfg(synth_dataset, frame_vae, 4), tmp_path / "full", progress=False)
    cfg = _cfg(synth_dataset, frame_vae, 4)
    assert train_packer(cfg, tmp_path / "half", progress=False, stop_at=2) is None
    train_packer(cfg, tmp_path / "half", resume=True, progress=False)

    def losses(run):
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if "loss" in r]

    assert losses(tmp_path / "full") == pytest.approx(losses(tmp_path / "half"), rel=1e-5)
    metrics = [
        json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    test = [m for m in metrics if "test_latent_mse" in m][-1]
    assert np.isfinite(test["test_psnr"]) and "test_mouth_dark_corr" in test
    vae = load_vae(full)
    assert isinstance(vae, FactorisedVAE) and vae.frame_std.min() > 0
    assert not torch.equal(vae.frame_mean, torch.zeros_like(vae.frame_mean))
    # the frame VAE is carried over unchanged
    frame = VideoVAE.load(frame_vae)
    for k, v in frame.ae.state_dict().items():
        assert torch.equal(vae.frame.ae.state_dict()[k], v)


def test_packer_learns(synth_dataset, frame_vae, tmp_path):
    """A few dozen steps lower the packing loss well below where it starts."""
    cfg = _cfg(synth_dataset, frame_vae, 40, lr=1e-2, deviation_weight=1.0)
    train_packer(cfg, tmp_path / "r", progress=False)
    recs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    loss = [r["mse"] for r in recs if "mse" in r]
    assert np.mean(loss[-5:]) < 0.7 * np.mean(loss[:3])


def test_a_new_decoder_keeps_the_latents(synth_dataset, frame_vae, tmp_path):
    """init= a factorised VAE with train_encoder=false: the decoder (here a residual one)
    learns, the encoder and so every latent stay exactly as they were."""
    first = train_packer(_cfg(synth_dataset, frame_vae, 2), tmp_path / "a", progress=False)
    cfg = _cfg(synth_dataset, "", 6, lr=1e-2, init=str(first), train_encoder=False, residual=True)
    second = train_packer(cfg, tmp_path / "b", progress=False)
    # the frames were encoded once, by the first run: the second takes its latents
    assert (tmp_path / "a" / LATENTS).is_file() and not (tmp_path / "b" / LATENTS).exists()
    assert (
        f"frame latents from {tmp_path / 'a' / LATENTS}" in (tmp_path / "b" / "log.txt").read_text()
    )
    a, b = load_vae(first), load_vae(second)
    assert b.config.residual and not a.config.residual and b.config.width == a.config.width
    x = _video(17)
    with torch.no_grad():
        assert torch.equal(a.encode(x), b.encode(x))
        assert not torch.allclose(a.decode(a.encode(x)), b.decode(b.encode(x)))
    assert torch.equal(a.frame_std, b.frame_std)
    with pytest.raises(ReadtalkError, match="needs init"):
        _cfg(synth_dataset, frame_vae, 2, train_encoder=False).validate()
    # a chain of 2 groups, each decoded after the decoder's own last frame
    cfg = _cfg(synth_dataset, "", 3, init=str(first), train_encoder=False, unroll=2)
    third = load_vae(train_packer(cfg, tmp_path / "c", progress=False))
    with torch.no_grad():
        assert torch.equal(a.encode(x), third.encode(x))
    # another window than the first run's: the frames are encoded anew
    cfg = _cfg(synth_dataset, "", 1, init=str(first), window=9, eval_frames=9)
    train_packer(cfg, tmp_path / "d", progress=False)
    assert (tmp_path / "d" / LATENTS).is_file()
    with pytest.raises(ReadtalkError, match=r"unroll must be 1\.\.2"):
        _cfg(synth_dataset, frame_vae, 2, unroll=3).validate()


def test_saved_latents_of_a_subset_of_clips():
    saved = {"frame_vae_sha256": "f", "window": 17, "ids": ["a", "b", "c"]}
    saved["latents"] = torch.arange(3.0)
    key = {"frame_vae_sha256": "f", "window": 17, "ids": ["c", "a"]}
    assert torch.equal(_saved_latents(saved, key), torch.tensor([2.0, 0.0]))
    assert _saved_latents(saved, {**key, "ids": ["a", "b", "c"]}) is saved["latents"]
    assert _saved_latents(saved, {**key, "ids": ["a", "d"]}) is None  # a clip it lacks
    assert _saved_latents(saved, {**key, "window": 9}) is None
    assert _saved_latents(saved, {**key, "frame_vae_sha256": "g"}) is None
    # a clip too short was left out when encoding: rows and ids no longer align
    assert _saved_latents({**saved, "latents": torch.arange(2.0)}, key) is None


def test_residual_decoder_adds_the_context():
    torch.manual_seed(0)
    p = Packer(c=4, k=4, width=8, group=8, residual=True)
    z, prev = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    plain = Packer(c=4, k=4, width=8, group=8)
    plain.load_state_dict(p.state_dict())
    assert torch.allclose(p.decode(z, prev), plain.decode(z, prev) + prev[:, None])
    assert torch.allclose(p.decode(z, None), plain.decode(z, None))


def test_packer_config_errors_and_cli(synth_dataset, frame_vae, tmp_path, capsys):
    for bad, msg in (
        (dict(window=16), "8k\\+1"),
        (dict(context_dropout=1.0), "context_dropout"),
        (dict(deviation_weight=-1.0), "deviation_weight"),
    ):
        with pytest.raises(ReadtalkError, match=msg):
            _cfg(synth_dataset, frame_vae, 2, **bad).validate()
    with pytest.raises(ReadtalkError, match="frame VAE"):
        _cfg(synth_dataset, "", 2).validate()
    args = ["train", "packer", "--data", str(synth_dataset), "--vae", str(frame_vae), "--out",
            str(tmp_path / "cli"), "--steps", "2", "--quiet", "--set", "width=8", "--set",
            "clips=1", "--set", "window=9", "--set", "eval_frames=9", "--set", "eval_clips=1",
            "--set", "train.batch_size=2"]  # fmt: skip
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert isinstance(load_vae(tmp_path / "cli" / "vae.safetensors"), FactorisedVAE)
    main(["eval-vae", "--weights", str(tmp_path / "cli" / "vae.safetensors"), "--data",
          str(synth_dataset), "--frames", "17", "--clips", "1", "--quiet"])  # fmt: skip
    assert "PSNR" in capsys.readouterr().out
    bad = [*args[:6], "--out", str(tmp_path / "cli2"), "--vae", str(tmp_path / "no.safetensors")]
    assert main([*bad, "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err


def test_pipeline_generates_with_a_factorised_vae(fvae, tmp_path):
    """A model folder whose VAE is factorised generates a long video clip by clip (each clip
    decoded after the previous one's latents)."""
    import dataclasses

    from readtalk.dit import A2VDiT
    from readtalk.dit.model import DIT_SIZES
    from readtalk.dit.release import save_dit_release
    from readtalk.media import SAMPLES_PER_FRAME
    from readtalk.pipeline import Pipeline
    from readtalk.release import save_release
    from readtalk.speech.speechae import SPEECHAE_SIZES, SpeechAE

    root = tmp_path / "m"
    fvae.save(root / "vae.safetensors")
    cfg = dataclasses.replace(SPEECHAE_SIZES["debug"], feat_dim=160, front_end="logmel")
    save_release(
        root / "speechae.safetensors", SpeechAE(cfg).state_dict(), "readtalk.speechae",
        cfg.to_json(),
    )  # fmt: skip
    torch.manual_seed(0)
    save_dit_release(
        root / "dit.safetensors", A2VDiT(DIT_SIZES["debug"]), latent_mean=[0.0] * 8,
        latent_std=[1.0] * 8,
        diffusion={"steps": 2, "shift": 1.0, "motion_latents": 1, "clip_frames": 17, "size": 64},
    )  # fmt: skip
    pipe = Pipeline.from_pretrained(root)
    assert isinstance(pipe.vae, FactorisedVAE)
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    audio = np.random.default_rng(1).standard_normal(45 * SAMPLES_PER_FRAME).astype(np.float32)
    res = pipe(image, audio * 0.1, progress=False)
    assert res.frames.shape == (45, 64, 64, 3)
    assert res.frames.std() > 0
    assert res.settings.group_blend == 2  # the default: group starts blended
    # the blend is causal: a stream in 20-ms pieces gives the same frames
    s = pipe.stream(image)
    x = audio * 0.1
    streamed = [f for i in range(0, len(x), 320) for f in s.push(x[i : i + 320])] + s.flush()
    assert np.array_equal(np.stack(streamed), res.frames)
    plain = pipe(image, x, group_blend=0, progress=False).frames
    assert np.array_equal(plain[:1], res.frames[:1])  # frame 0: no group before it
    assert not np.array_equal(plain, res.frames)


def test_blend_group_start_spreads_the_step():
    from readtalk.vae.factorised import blend_group_start

    last = torch.zeros(1, 2, 3, 3)
    run = torch.ones(1, 8, 2, 3, 3)  # a step of 1 into the group, then still
    out = blend_group_start(run, last, 3)
    steps = torch.cat([last[:, None], out], dim=1).diff(dim=1).amax(dim=(2, 3, 4))[0]
    assert torch.allclose(steps[:4], torch.full((4,), 0.25)) and steps[4:].abs().max() == 0
    assert torch.equal(out[:, 3:], run[:, 3:]) and torch.equal(blend_group_start(run, last, 0), run)


def test_a_new_frame_decoder_keeps_the_latents(synth_dataset, frame_vae, tmp_path, capsys):
    """train vae with init= a factorised VAE and train_encoder=false: only the frame VAE's
    decoder learns, on single frames; packer, statistics and every latent stay as they were,
    and the release is a factorised VAE again."""
    from readtalk.train.vae import VAERunConfig, train_vae

    first = load_vae(
        train_packer(_cfg(synth_dataset, frame_vae, 2), tmp_path / "a", progress=False)
    )
    tc = OptimConfig(steps=4, batch_size=2, lr=1e-2, warmup=1, eval_every=4, ckpt_every=2,
                     log_every=1, threads=1)  # fmt: skip
    cfg = VAERunConfig(data=str(synth_dataset), init=str(tmp_path / "a" / "vae.safetensors"),
                       train_encoder=False, clip_frames=1, mouth_weight=10.0, eval_clips=1,
                       eval_frames=17, train=tc)  # fmt: skip
    second = load_vae(train_vae(cfg, tmp_path / "b", progress=False))
    assert isinstance(second, FactorisedVAE)
    x = _video(17)
    with torch.no_grad():
        assert torch.equal(first.encode(x), second.encode(x))
        z = first.encode(x)
        assert not torch.allclose(first.decode(z), second.decode(z))
    for k, v in first.packer.state_dict().items():
        assert torch.equal(second.packer.state_dict()[k], v)
    assert torch.equal(first.latents_std, second.latents_std)
    dec = {k for k, v in first.frame.state_dict().items()
           if not torch.equal(v, second.frame.state_dict()[k])}  # fmt: skip
    assert dec and all(k.startswith("ae.decoder.") for k in dec)
    # a factorised VAE's encoder does not train here, and train_encoder=false needs init
    args = [
        "train",
        "vae",
        "--data",
        str(synth_dataset),
        "--out",
        str(tmp_path / "c"),
        "--init",
        str(tmp_path / "a" / "vae.safetensors"),
        "--steps",
        "1",
        "--quiet",
    ]
    assert main([*args, "--set", "clip_frames=1"]) == 2
    assert "only its frame decoder" in capsys.readouterr().err
    with pytest.raises(ReadtalkError, match="needs init"):
        VAERunConfig(data=str(synth_dataset), train_encoder=False).validate()
