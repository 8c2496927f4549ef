"""The DiT's mouth loss (``diffusion.mouth_weight``, readtalk.train.mouth_probe): the probe finds
the latent directions that carry the lip gap, the loss sees only the error along them, and a
DiT run with it trains, logs it and resumes exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from readtalk.errors import ReadtalkError
from readtalk.train.dit import DiffusionConfig, DiTRunConfig, dit_losses
from readtalk.train.mouth_probe import fit_mouth_probe, mouth_loss, probe_from_cache, probe_gaps

torch.set_num_threads(1)


def _planted(n: int, seed: int):
    """Latents (n, 4, 3, 2, 2) whose 8 frames' gaps are a fixed linear map of 8 of the 16
    values each latent frame has, plus noise; the map's directions span ``basis`` (16, 8)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)))[0]
    z = torch.randn(n, 4, 3, 2, 2, generator=g)
    flat = z.transpose(1, 2).flatten(2)  # (n, 3, 16): c, h, w per latent frame
    y = flat[:, 1:] @ basis + 0.05 * torch.randn(n, 2, 8, generator=g)  # latents 1, 2
    gap = torch.cat([torch.zeros(n, 1), y.flatten(1)], dim=1)  # frames 0..16
    return z, gap, basis


def test_the_probe_finds_the_directions_that_carry_the_gap():
    z, gap, basis = _planted(200, 1)
    probe = fit_mouth_probe(z, gap)
    assert probe.shape == (16, 8)
    torch.testing.assert_close(probe.norm(dim=0), torch.ones(8))
    # every probe column lies in the planted subspace
    inside = (basis @ (basis.T @ probe)).norm(dim=0)
    assert float(inside.min()) > 0.97, inside
    # and reads held-out gaps: r over each window's 16 frames
    z2, gap2, _ = _planted(50, 2)
    pred = probe_gaps(z2, probe)[:, 1:]  # (n, 2, 8); each column a unit direction of the map
    fit = torch.linalg.lstsq(pred.flatten(0, 1), gap2[:, 1:].reshape(-1, 8)).solution
    r = np.corrcoef((pred.flatten(0, 1) @ fit).flatten(), gap2[:, 1:].flatten())[0, 1]
    assert r > 0.95, r


def test_the_probe_needs_lip_gaps():
    z, gap, _ = _planted(40, 1)
    with pytest.raises(ReadtalkError, match="lip-gap ground truth"):
        fit_mouth_probe(z, torch.full_like(gap, float("nan")))
    with pytest.raises(ReadtalkError, match="never change"):
        fit_mouth_probe(z, torch.zeros_like(gap))
    gap[:30, 5] = float("nan")  # latent 1 of 30 windows unknown: 50 latents left, enough
    fit_mouth_probe(z, gap)


def test_the_mouth_loss_sees_only_the_error_along_the_probe():
    z, gap, _ = _planted(100, 1)
    probe = fit_mouth_probe(z, gap)
    target = torch.randn(3, 4, 3, 2, 2)
    mask = torch.ones(3, 3, dtype=torch.bool)
    assert float(mouth_loss(target, target, probe, mask)) == 0.0
    # an error orthogonal to every probe direction costs nothing; along one, its square / 8
    e = torch.randn(16)
    e -= probe @ torch.linalg.lstsq(probe, e[:, None]).solution[:, 0]
    err = e.view(4, 2, 2)[:, None].expand(4, 3, 2, 2)
    assert float(mouth_loss(target + err, target, probe, mask)) < 1e-8
    along = probe[:, 0].view(4, 2, 2)[:, None].expand(4, 3, 2, 2) * 2.0
    got = float(mouth_loss(target + along, target, probe, mask))
    want = float(((probe.T @ probe[:, 0] * 2.0) ** 2).mean())
    assert got == pytest.approx(want, rel=1e-5)
    # frames outside the mask do not count
    off = mask.clone()
    off[:, 1:] = False
    bad = target.clone()
    bad[:, :, 1:] += 10.0
    assert float(mouth_loss(bad, target, probe, off)) == 0.0


def test_dit_losses_add_the_weighted_mouth_term():
    from readtalk.dit import A2VDiT
    from readtalk.dit.model import DIT_SIZES

    z, gap, _ = _planted(40, 1)
    probe = fit_mouth_probe(z, gap)
    torch.manual_seed(0)
    model = A2VDiT(dataclasses.replace(DIT_SIZES["debug"], latent_channels=4, audio_dim=8))
    batch = {"latent": z[:4], "ref": z[:4, :, :1], "audio": torch.randn(4, 3, 8)}
    plain = dit_losses(model, batch, DiffusionConfig(), torch.Generator().manual_seed(3))
    assert set(plain) == {"loss"}
    for w in (1.0, 2.5):
        d = DiffusionConfig(mouth_weight=w)
        out = dit_losses(model, batch, d, torch.Generator().manual_seed(3), probe=probe)
        assert float(out["mouth"].detach()) > 0
        torch.testing.assert_close(out["loss"], plain["loss"] + w * out["mouth"])
    with pytest.raises(ReadtalkError, match="mouth_weight"):
        DiTRunConfig(cache="c", diffusion=DiffusionConfig(mouth_weight=-1)).validate()


def test_a_large_cache_is_fitted_on_evenly_spaced_windows():
    class Cache:  # the part of CachedLatents the probe reads
        def __init__(self, n):
            self.latent, self.gap, _ = _planted(n, 3)

        def __len__(self):
            return len(self.latent)

        def normalize(self, z):
            return z.float() * 2.0

    data = Cache(90)
    whole = probe_from_cache(data)
    torch.testing.assert_close(whole, fit_mouth_probe(data.latent * 2.0, data.gap))
    some = probe_from_cache(data, max_windows=30)
    idx = torch.linspace(0, 89, 30).long()
    torch.testing.assert_close(some, fit_mouth_probe(data.latent[idx] * 2.0, data.gap[idx]))
    assert not torch.allclose(some, whole)
