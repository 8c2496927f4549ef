import numpy as np
import pytest

from readtalk.data.synthtalk.identity import (
    CAVITY,
    PALETTE_MIN_DISTANCE,
    cavity_distance,
    sample_identity,
)
from readtalk.data.synthtalk.render import FaceRenderer, FrameState
from readtalk.data.synthtalk.visemes import mouth_trajectory, viseme_targets


@pytest.mark.parametrize("size", [64, 128, 256, 320])
def test_render_sizes(size):
    r = FaceRenderer(sample_identity(np.random.default_rng(0)), size)
    assert r.render(FrameState()).shape == (size, size, 3)


@pytest.mark.parametrize("size", [100, 48])
def test_render_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        FaceRenderer(sample_identity(np.random.default_rng(0)), size)


def test_mouth_and_blink_change_only_their_regions():
    idn = sample_identity(np.random.default_rng(3))
    r = FaceRenderer(idn, 128)
    base = r.render(FrameState()).astype(int)
    opened = r.render(FrameState(open=0.8)).astype(int)
    blink = r.render(FrameState(blink=1.0)).astype(int)
    d_mouth = np.abs(opened - base).sum(2) > 0
    d_eyes = np.abs(blink - base).sum(2) > 0
    ys, _ = np.nonzero(d_mouth)
    ye, _ = np.nonzero(d_eyes)
    assert d_mouth.sum() > 30 and d_eyes.sum() > 10
    assert ye.max() < ys.min()  # eyes above the mouth, nothing else changes
    assert (cavity_distance(opened) < 10).sum() > 10  # the interior shows
    assert (cavity_distance(base) < 10).sum() == 0


def test_identities_differ_and_avoid_the_interior_colour():
    ids = [sample_identity(np.random.default_rng(k)) for k in range(300)]
    assert len({i.skin for i in ids}) > 250 and len({i.hair_style for i in ids}) >= 6
    for i in ids:
        for c in (i.skin, i.lips, i.hair, i.clothes, i.bg_top, i.bg_bottom):
            assert cavity_distance(np.array(c)) > PALETTE_MIN_DISTANCE - 1, c
    assert cavity_distance(np.array(CAVITY)) == 0


def test_head_motion_moves_the_face():
    r = FaceRenderer(sample_identity(np.random.default_rng(1)), 128)
    a = r.render(FrameState())
    b = r.render(FrameState(tx=0.05, tilt=5, scale=1.05))
    assert np.abs(a.astype(int) - b).mean() > 3


def _segments(spec):
    t, out = 0.1, []
    for sym, dur in spec:
        out.append((sym, t, t + dur, False))
        t += dur
    return out


def test_bilabials_close_vowels_open_and_coarticulation_anticipates():
    segs = _segments(
        [("m", 0.12), ("A:", 0.2), ("p", 0.12), ("A:", 0.2), ("b", 0.12), ("u:", 0.24)]
    )
    traj = mouth_trajectory(segs, 1.2, fps=100)
    frame = lambda t: int(t * 100)  # noqa: E731
    assert traj[frame(0.16), 0] < 0.12  # /m/
    assert traj[frame(0.32), 0] > 0.7  # /A:/
    assert traj[frame(0.48), 0] < 0.12  # /p/ closes
    assert traj[frame(0.98), 2] > 0.7  # /u:/ rounds
    # lips start rounding for /u:/ during the /b/ before it (anticipation)
    assert traj[frame(0.83), 2] > traj[frame(0.3), 2] + 0.1
    assert traj[frame(0.02), 0] < 0.05  # silence before speech: closed


def test_every_observed_espeak_symbol_has_a_viseme():
    observed = """
    0 3 3: @ @2 @5 @L A: A@ E I I# I2 IR O2 O: O@ OI U U@ V VR a a# aI aI2 aI3 aI@ aU aa e@ eI i
    i: i@ i@3 o@ oU u: b d D dZ f g h j k l m n n- N p r r- s S t t# t2 t[ tS T v w w# x z Z ? ;
    _ _: _|
    """.split()
    for s in observed:
        vs = viseme_targets(s)
        assert 1 <= len(vs) <= 2 and all(0 <= v.open <= 1 for v in vs)
    assert len(viseme_targets("aI")) == 2
