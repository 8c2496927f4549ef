"""The adversarial terms of decoder training (train.adversarial) and the per-frame region boxes
they are weighted with (train.frames)."""

import json

import numpy as np
import pytest
import torch

from readtalk.config import load_config
from readtalk.errors import ReadtalkError
from readtalk.train.adversarial import (
    GANConfig,
    PatchDiscriminator,
    adaptive_weight,
    adversarial_losses,
    feature_matching,
    gradient_l1,
    hinge_d,
)
from readtalk.train.vae import VAERunConfig, train_vae


def _video(seed, b=2, f=1, s=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, s, s, generator=g) * 2 - 1


def test_patch_discriminator_gives_patch_logits_and_features():
    disc = PatchDiscriminator(width=8, layers=3)
    logits, feats = disc(torch.zeros(2, 3, 128, 128))
    assert logits.shape == (2, 1, 14, 14)
    assert [f.shape[1] for f in feats] == [8, 16, 32, 64]
    assert PatchDiscriminator(width=8, layers=5)(torch.zeros(1, 3, 128, 128))[1][-1].shape[1] == 64


def test_one_backward_trains_each_player_only_on_its_own_loss():
    """The generator's terms reach the reconstruction through a detached discriminator, the
    discriminator's loss reaches the discriminator through a detached reconstruction: one
    backward gives exactly the gradients of two separate updates."""
    torch.manual_seed(0)
    disc = PatchDiscriminator(width=4, layers=2)
    cfg = GANConfig(weight=0.7, fm_weight=0.3, adaptive=False)
    target = _video(1)
    recon = _video(2).requires_grad_(True)
    out = adversarial_losses(cfg, disc, recon, target, torch.zeros(()), torch.zeros(()), step=0)
    out["total"].backward()
    got_recon = recon.grad.clone()
    got_disc = [p.grad.clone() for p in disc.parameters()]

    frames = lambda v: v.transpose(1, 2).reshape(-1, 3, 32, 32)  # noqa: E731
    recon2 = recon.detach().clone().requires_grad_(True)
    disc.zero_grad()
    d_loss = hinge_d(disc(frames(target))[0], disc(frames(recon2).detach())[0])
    want_disc = torch.autograd.grad(d_loss, list(disc.parameters()))
    disc.requires_grad_(False)
    logits, fake_feats = disc(frames(recon2))
    g = 0.7 * -logits.mean() + 0.3 * feature_matching(disc(frames(target))[1], fake_feats)
    (want_recon,) = torch.autograd.grad(g, recon2)
    assert torch.allclose(got_recon, want_recon, atol=1e-6)
    for a, b in zip(got_disc, want_disc, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert out["total"].item() == pytest.approx(d_loss.item() + g.item(), rel=1e-5)


def test_generator_feels_the_discriminator_only_after_start():
    disc = PatchDiscriminator(width=4, layers=2)
    cfg = GANConfig(weight=1.0, start=10, adaptive=False)
    recon = _video(2).requires_grad_(True)
    early = adversarial_losses(cfg, disc, recon, _video(1), torch.zeros(()), torch.zeros(()), 9)
    assert "adv" not in early and early["total"].item() == early["d_loss"].item()
    early["total"].backward()
    assert recon.grad is None or recon.grad.abs().max() == 0  # the discriminator learns alone
    late = adversarial_losses(cfg, disc, recon, _video(1), torch.zeros(()), torch.zeros(()), 10)
    assert "adv" in late and late["adv_scale"].item() == 1.0


def test_adaptive_weight_balances_the_gradient_norms():
    layer = torch.ones(3, requires_grad=True)
    rec = (4.0 * layer).sum()  # gradient norm 4 * sqrt(3)
    adv = (0.5 * layer).sum()  # 0.5 * sqrt(3)
    assert adaptive_weight(rec, adv, layer, 100.0).item() == pytest.approx(8.0, rel=1e-3)
    assert adaptive_weight(rec, adv, layer, 2.0).item() == 2.0  # clamped


def test_gradient_term_sees_blur_that_leaves_the_mean_alone():
    sharp = torch.zeros(1, 1, 16, 16)
    sharp[..., 8:] = 1.0  # an edge
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, 1, 1, count_include_pad=False)
    assert gradient_l1(sharp, sharp, None).item() == 0.0
    assert gradient_l1(blurred, sharp, None).item() > 0.0
    w = torch.ones(1, 1, 16, 16)
    w[..., :4] = 0.0  # the edge lies where the weight is
    assert gradient_l1(blurred, sharp, w).item() > gradient_l1(blurred, sharp, None).item()


def test_gan_config_errors():
    for bad in ({"weight": -1.0}, {"layers": 0}, {"width": 0}, {"ema_decay": 1.0}):
        with pytest.raises(ReadtalkError, match="gan"):
            GANConfig(**bad).validate()


def test_region_boxes_cover_each_frames_mouth_and_eyes(synth_dataset):
    from readtalk.data.manifest import load_manifest, load_track
    from readtalk.eval.regions import synthtalk_regions
    from readtalk.train.frames import ClipSampler

    records = [r for r in load_manifest(synth_dataset) if r["split"] == "train"]
    sampler = ClipSampler(records, 1, 64, False, bank=3, regions=True, margin=0)
    _, box = sampler.sample_with_box(6, np.random.default_rng(0))
    assert box.shape == (6, 1, 1, 64, 64) and set(box.unique().tolist()) == {0.0, 1.0}
    n = sampler._frame_bank().shape[0]
    masks = np.stack([[sampler.region_mask(c, k) for k in range(3)] for c in range(n)])
    assert masks.shape == (n, 3, 64, 64)
    geo = synthtalk_regions(load_track(records[0]), 64)
    pick = np.linspace(0, records[0]["frames"] - 1, 3).round().astype(int)
    for k, f in enumerate(pick):  # exactly the union of the frame's boxes (no margin)
        want = np.zeros((64, 64), np.uint8)
        for x0, y0, x1, y1 in np.concatenate([geo["mouth"][f], geo["eyes"][f]]):
            want[y0:y1, x0:x1] = 1
        assert np.array_equal(masks[0, k], want)
    with pytest.raises(ReadtalkError, match="frame bank"):
        ClipSampler(records, 1, 64, False, regions=True)


def _gan_cfg(data, steps, **kw):
    sets = {
        "data": data,
        "preset": "debug",
        "size": 64,
        "clip_frames": 1,
        "eval_frames": 9,
        "eval_clips": 1,
        "frame_bank": 2,
        "region_boxes": True,
        "mouth_weight": 5.0,
        "train.steps": steps,
        "train.log_every": 1,
        "train.eval_every": 4,
        "train.ckpt_every": 2,
        "train.batch_size": 2,
        "train.warmup": 1,
        "gan.weight": 0.5,
        "gan.start": 2,
        "gan.fm_weight": 1.0,
        "gan.grad_weight": 1.0,
        "gan.width": 8,
        "gan.layers": 2,
        "gan.ema_decay": 0.9,
        **kw,
    }
    return load_config(VAERunConfig, overrides=[f"{k}={v}" for k, v in sets.items()])


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_adversarial_training_logs_its_terms_and_resumes_exactly(synth_dataset, tmp_path):
    from readtalk.vae.factorised import load_vae

    full = train_vae(_gan_cfg(synth_dataset, 4), tmp_path / "full", progress=False)
    cut = train_vae(_gan_cfg(synth_dataset, 4), tmp_path / "half", progress=False, stop_at=2)
    assert cut is None
    train_vae(_gan_cfg(synth_dataset, 4), tmp_path / "half", resume=True, progress=False)
    losses = lambda run: [r["loss"] for r in _rows(run) if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "full") == losses(tmp_path / "half")  # discriminator resumed too
    rows = [r for r in _rows(tmp_path / "full") if "loss" in r]
    assert all("d_loss" in r and "fm" in r and "grad" in r for r in rows)
    assert "adv" not in rows[1] and "adv" in rows[2]  # the generator's term from step 2
    assert any("test_sharpness" in r for r in _rows(tmp_path / "full"))
    load_vae(full)  # the EMA weights, as a VAE


def test_gan_needs_a_bank_for_region_boxes(synth_dataset):
    with pytest.raises(ReadtalkError, match="region_boxes"):
        _gan_cfg(synth_dataset, 2, frame_bank=0).validate()


def test_each_player_is_clipped_on_its_own():
    from readtalk.train.adversarial import GANPair

    pair = GANPair(torch.nn.Linear(3, 3), PatchDiscriminator(width=4, layers=1))
    for p in pair.vae.parameters():
        p.grad = torch.full_like(p, 0.01)
    for p in pair.disc.parameters():
        p.grad = torch.full_like(p, 10.0)
    small = [p.grad.clone() for p in pair.vae.parameters()]
    norm = pair.clip_grad_norm(1.0)
    assert norm.item() == pytest.approx(0.01 * 12**0.5, rel=1e-4)  # the decoder's, unclipped
    assert all(torch.equal(a, p.grad) for a, p in zip(small, pair.vae.parameters(), strict=True))
    disc_norm = torch.cat([p.grad.flatten() for p in pair.disc.parameters()]).norm()
    assert disc_norm.item() == pytest.approx(1.0, rel=1e-4)
