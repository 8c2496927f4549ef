"""FID/FVD: the networks load official-layout state dicts strict, the Fréchet distance matches
closed forms, and the metrics behave (0 for a set against itself, > 0 when perturbed).

Weights are random (He-initialised so activations keep their scale through ~20 layers); the
official files are not needed. Key names and shapes below were read from pytorch-fid's and
piergiaj/pytorch-i3d's model definitions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from readtalk.errors import ReadtalkError
from readtalk.eval import frechet, i3d, inception
from readtalk.eval.frechet import (
    RunningStats,
    check_weights,
    frechet_distance,
    fvd,
    i3d_stats,
    load_network,
)

# A few keys of pt_inception-2015-12-05-6726825d.pth and rgb_imagenet.pt with their shapes, and
# the number of keys without BatchNorm's num_batches_tracked (present or not depending on the
# PyTorch version that wrote the file).
INCEPTION_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5d.branch_pool.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
INCEPTION_NUM_KEYS = 472  # 94 conv+BN units x 5 + fc weight and bias
I3D_KEYS = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_mean": (64,),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_4f.b3b.bn.weight": (128,),
    "Mixed_5c.b2b.conv3d.weight": (128, 48, 3, 3, 3),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}
I3D_NUM_KEYS = 287  # 57 conv+BN units x 5 + logit weight and bias


def _random_official(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The net's state dict with random He-initialised weights, BatchNorm at identity."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in net.state_dict().items():
        v = v.clone()
        if v.dtype.is_floating_point and v.ndim >= 2:  # conv / linear weights
            v = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
        elif k.endswith(("running_var", "bn.weight")):
            v.fill_(1.0)
        elif v.dtype.is_floating_point:
            v.zero_()
        state[k] = v
    return state


def _official_keys(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    state = _random_official(inception.FIDInceptionV3(), seed=0)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("w") / inception.WEIGHTS_NAME
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    state = _random_official(i3d.I3D(), seed=1)  # this one with num_batches_tracked
    path = tmp_path_factory.mktemp("w") / i3d.WEIGHTS_NAME
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------ networks


def test_inception_official_layout_and_features(inception_file):
    state = torch.load(inception_file, weights_only=True)
    keys = _official_keys(state)
    assert len(keys) == INCEPTION_NUM_KEYS
    for k, shape in INCEPTION_KEYS.items():
        assert keys[k] == shape, k
    assert check_weights(inception_file, "fid") is None
    net = load_network(inception_file, "fid")  # strict
    frames = torch.randint(0, 256, (2, 40, 56, 3), dtype=torch.uint8)
    x = inception.preprocess(frames)
    assert x.shape == (2, 3, 299, 299) and x.min() >= -1 and x.max() <= 1
    with torch.no_grad():
        feats = net(x)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and feats.std() > 1e-3


def test_i3d_official_layout_and_features(i3d_file):
    state = torch.load(i3d_file, weights_only=True)
    keys = _official_keys(state)
    assert len(keys) == I3D_NUM_KEYS
    for k, shape in I3D_KEYS.items():
        assert keys[k] == shape, k
    assert check_weights(i3d_file, "fvd") is None
    net = load_network(i3d_file, "fvd")
    clips = torch.randint(0, 256, (2, 8, 20, 24, 3), dtype=torch.uint8)
    x = i3d.preprocess(clips, size=32)
    assert x.shape == (2, 3, 8, 32, 32)
    with torch.no_grad():
        logits, pooled = net(x), net.pool(x)
    assert logits.shape == (2, 400) and pooled.shape == (2, 1024)
    assert torch.isfinite(logits).all() and logits.std() > 1e-3
    # the logit layer is affine on the pooled features (1x1x1 conv after the global mean)
    w = state["logits.conv3d.weight"].flatten(1)
    torch.testing.assert_close(logits, pooled @ w.T + state["logits.conv3d.bias"])


def test_same_padding_matches_tf():
    # TF SAME: output ceil(s / stride); an odd amount of padding puts the extra pixel at the end
    y = i3d._pad_same(torch.ones(1, 1, 16, 1, 5), (7, 1, 3), (2, 1, 2))
    assert y.shape == (1, 1, 21, 1, 7)  # time: 2 | 16 | 3, width: 1 | 5 | 1
    t = y[0, 0, :, 0, 1]
    assert t[:2].eq(0).all() and t[2:18].eq(1).all() and t[18:].eq(0).all()
    assert y[0, 0, 5, 0].tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert i3d._pad_same(torch.ones(1, 1, 4, 4, 4), (2, 2, 2), (2, 2, 2)).shape[2:] == (4, 4, 4)


# -------------------------------------------------------------------------------------- maths


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_closed_form(method):
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(want, rel=1e-10)
    # identical statistics, full and rank-deficient covariances
    a = rng.normal(size=(20, 6))
    assert abs(frechet_distance(mu1, a.T @ a, mu1, a.T @ a, method=method)) < 1e-9
    b = rng.normal(size=(3, 6))
    assert abs(frechet_distance(mu1, b.T @ b, mu1, b.T @ b, method=method)) < 1e-6


def test_frechet_methods_agree_on_full_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 40)), rng.normal(size=(200, 40)) * 1.3 + 0.2
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    d_eigh = frechet_distance(a.mean(0), s1, b.mean(0), s2, method="eigh")
    d_sqrtm = frechet_distance(a.mean(0), s1, b.mean(0), s2, method="sqrtm")
    assert d_eigh == pytest.approx(d_sqrtm, rel=1e-9)


def test_running_stats_match_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(37, 5)) * 3 + 1e4  # a large mean: raw second moments would lose digits
    stats = RunningStats(5)
    for part in np.split(x, [1, 2, 10, 30]):
        stats.update(torch.from_numpy(part) if len(part) == 8 else part)
    assert stats.n == 37
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-9)


# ------------------------------------------------------------------------------------ metrics


def test_fid_zero_for_same_set_positive_when_perturbed(inception_file):
    g = torch.Generator().manual_seed(3)
    video = torch.randint(0, 256, (3, 48, 48, 3), dtype=torch.uint8, generator=g)
    noise = torch.randint(-40, 41, video.shape, generator=g)
    other = (video.int() + noise).clamp(0, 255).to(torch.uint8)
    same = frechet.fid([video], list(video), inception_file, batch_size=2)  # items: video, frames
    moved = frechet.fid([video], [other], inception_file, batch_size=2)
    assert abs(same) < 1e-3 * moved and moved > 0


def test_fvd_zero_for_same_set_positive_when_perturbed(i3d_file):
    g = torch.Generator().manual_seed(4)
    clips = torch.randint(0, 256, (4, 8, 24, 24, 3), dtype=torch.uint8, generator=g)
    other = clips.flip(1)  # same frames, time reversed
    kw = dict(clip_len=8, size=32, batch_size=3)
    same = fvd(clips.numpy(), [clips[:1], clips[1:]], i3d_file, **kw)
    moved = fvd(clips, other, i3d_file, **kw)
    assert abs(same) < 1e-6 * moved and moved > 0
    pooled = fvd(clips, other, i3d_file, features="pool", **kw)
    assert pooled > 0


def test_batching_does_not_change_statistics(i3d_file):
    net = load_network(i3d_file, "fvd")
    clips = torch.randint(0, 256, (5, 8, 16, 16, 3), dtype=torch.uint8)
    a = i3d_stats([clips], net, clip_len=8, size=32, batch_size=5)
    b = i3d_stats(list(clips), net, clip_len=8, size=32, batch_size=2)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.cov, b.cov, rtol=1e-4, atol=1e-5)


def test_bad_inputs(i3d_file):
    net = load_network(i3d_file, "fvd")
    clip = torch.zeros(9, 16, 16, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="8 frames"):
        i3d_stats([clip], net, clip_len=8, size=32)
    with pytest.raises(ValueError, match="uint8"):
        i3d_stats([clip.float()], net, clip_len=9, size=32)
    with pytest.raises(ReadtalkError, match="at least 2"):
        fvd([clip[:8]], [clip[:8], clip[1:]], i3d_file, clip_len=8, size=32)


# ------------------------------------------------------------------------------------ weights


def test_bad_weights_give_one_line_reasons(tmp_path, inception_file, i3d_file):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    charades = tmp_path / "rgb_charades.pt"
    state = torch.load(i3d_file, weights_only=True)
    state["logits.conv3d.weight"] = torch.zeros(157, 1024, 1, 1, 1)
    state["logits.conv3d.bias"] = torch.zeros(157)
    torch.save(state, charades)
    imagenet = tmp_path / "inception_v3_google.pth"
    state = torch.load(inception_file, weights_only=True)
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    torch.save(state, imagenet)

    cases = [
        (None, "fid", "no FID Inception weights file given"),
        (tmp_path / "missing.pth", "fid", "not found"),
        (tmp_path, "fvd", "not a regular file"),
        (garbage, "fid", "not a PyTorch state dict"),
        (i3d_file, "fid", "does not fit the network"),
        (inception_file, "fvd", "does not fit the network"),
        (charades, "fvd", "157 classes"),
        (imagenet, "fid", "torchvision's ImageNet Inception"),
    ]
    for path, kind, reason in cases:
        msg = check_weights(path, kind)
        assert msg is not None and reason in msg and "\n" not in msg, (path, msg)
    with pytest.raises(ReadtalkError, match="not found"):
        frechet.fid([np.zeros((8, 8, 3), np.uint8)] * 2, [], tmp_path / "missing.pth")
    with pytest.raises(ReadtalkError, match="157 classes"):
        fvd([], [], charades)
