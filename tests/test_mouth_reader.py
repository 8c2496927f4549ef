import numpy as np
import pytest

from readtalk.data.synthtalk import read_mouth
from readtalk.data.synthtalk.identity import sample_identity
from readtalk.data.synthtalk.mouth_reader import pearson, reader_agreement
from readtalk.data.synthtalk.render import FaceRenderer, FrameState, mouth_measures
from readtalk.media import read_video, write_video


def _random_frames(seed: int, identities: int, per_identity: int, size: int):
    rng = np.random.default_rng(seed)
    frames, truth = [], []
    for k in range(identities):
        idn = sample_identity(np.random.default_rng([seed, k]))
        renderer = FaceRenderer(idn, size)
        for _ in range(per_identity):
            st = FrameState(
                open=float(rng.uniform() ** 1.3 * (rng.uniform() < 0.85)),
                width=float(rng.uniform()),
                round=float(rng.uniform() * 0.8),
                blink=float(rng.uniform() * (rng.uniform() < 0.3)),
                gaze_x=float(rng.uniform(-1, 1)),
                tx=float(rng.normal(0, 0.02)),
                ty=float(rng.normal(0, 0.02)),
                tilt=float(rng.normal(0, 3)),
                scale=float(1 + rng.normal(0, 0.03)),
            )
            frames.append(renderer.render(st))
            truth.append(mouth_measures(idn, st))
    return np.stack(frames), np.array(truth)


@pytest.mark.parametrize("size", [128, 256])
def test_reader_meets_target_on_held_out_renders_with_motion_and_h264(tmp_path, size):
    # identities from a seed no dataset default uses; head motion, blinks, gaze, then H.264
    frames, truth = _random_frames(seed=987, identities=12, per_identity=10, size=size)
    write_video(tmp_path / "r.mp4", frames)
    decoded = read_video(tmp_path / "r.mp4")
    reads = [read_mouth(f) for f in decoded]
    gap = np.array([r.gap for r in reads])
    assert pearson(truth[:, 0], gap) >= 0.95
    closed = truth[:, 0] == 0
    assert closed.sum() > 5 and np.abs(gap[closed]).max() < 0.005
    wide = truth[:, 0] > 0.02
    assert pearson(truth[wide, 1], np.array([r.width for r in reads])[wide]) > 0.7


def test_reader_agreement_on_dataset_videos(synth_dataset):
    res = reader_agreement(str(synth_dataset), split=None, progress=False)
    assert res["clips"] == 6 and res["frames"] == 6 * 65
    assert res["open_pearson"] >= 0.95
    assert res["open_pearson_clip_mean"] >= 0.93


def test_reader_rejects_bad_frames():
    with pytest.raises(ValueError, match="RGB"):
        read_mouth(np.zeros((64, 64), np.uint8))
    blank = read_mouth(np.full((128, 128, 3), 200, np.uint8))
    assert blank.open == 0 and blank.center is None
