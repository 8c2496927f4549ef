"""Sharpness: the Laplacian-variance ratio against the truth, whole frame and in boxes; the
SynthTalk mouth and eye boxes; ``readtalk eval-vae`` reporting it."""

import itertools
import json

import cv2
import numpy as np
import pytest
import torch

from readtalk.data.synthtalk.dataset import sample_person
from readtalk.data.synthtalk.render import FaceRenderer, FrameState
from readtalk.eval.pixel import laplacian_variance, sharpness_ratio, variance_ratio
from readtalk.eval.regions import synthtalk_regions


def _texture(frames: int = 3, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (F, size, size, 3): noise smoothed a little, so there is detail at every scale."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (frames, size, size, 3)).astype(np.uint8)
    return np.stack([cv2.GaussianBlur(f, (0, 0), 0.7) for f in x])


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def test_blur_lowers_the_ratio_monotonically():
    truth = _texture()
    ratios = [sharpness_ratio(_blur(truth, s), truth) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(r < 1 for r in ratios)
    assert all(a > b for a, b in itertools.pairwise(ratios))
    assert ratios[-1] < 0.05
    noisy = np.clip(truth + np.random.default_rng(1).normal(0, 20, truth.shape), 0, 255)
    assert sharpness_ratio(noisy.astype(np.uint8), truth) > 1


def test_identical_frames_give_exactly_one_and_inputs_agree():
    truth = _texture()
    assert sharpness_ratio(truth, truth.copy()) == 1.0
    box = np.array([8, 8, 40, 40])
    assert sharpness_ratio(truth, truth.copy(), box) == 1.0
    # the [0, 1] (..., 3, H, W) tensors of psnr/ssim give the same as uint8 numpy frames
    unit = torch.from_numpy(truth).permute(0, 3, 1, 2).float().div(255)
    blurred = _blur(truth, 1.0)
    unit_b = torch.from_numpy(blurred).permute(0, 3, 1, 2).float().div(255)
    assert sharpness_ratio(unit_b, unit) == pytest.approx(sharpness_ratio(blurred, truth), 1e-5)
    assert laplacian_variance(unit).shape == (3,)


def test_a_box_restricts_the_measure():
    truth = _texture(frames=2, size=96)
    pred = _blur(truth, 2.0)
    pred[:, 20:60, 30:70] = truth[:, 20:60, 30:70]  # sharp inside, blurred outside
    inside = np.array([30, 20, 70, 60])  # (x0, y0, x1, y1)
    assert sharpness_ratio(pred, truth, inside) == pytest.approx(1.0)
    assert sharpness_ratio(pred, truth) < 0.5
    assert sharpness_ratio(pred, truth, np.array([0, 70, 96, 96])) < 0.2
    # several boxes per frame pool their pixels; a box too small for a 3x3 Laplacian: NaN
    two = np.array([[[30, 20, 70, 60], [0, 70, 96, 96]]] * 2)
    assert 0.2 < sharpness_ratio(pred, truth, two) < 1
    assert np.isnan(laplacian_variance(truth, np.array([5, 5, 7, 50]))).all()
    with pytest.raises(ValueError, match="boxes"):
        laplacian_variance(truth, np.zeros((2, 3)))


def test_ratio_of_means_survives_a_flat_frame():
    truth = _texture(frames=4)
    truth[0] = 128  # a flat frame: variance 0
    pred = _blur(truth, 1.0)
    pred[0] = 128 + (np.arange(64) % 2)[None, :, None]  # a little detail where the truth has none
    r = sharpness_ratio(pred, truth)
    assert np.isfinite(r) and r < 1.5
    assert np.isnan(variance_ratio(np.ones(3), np.zeros(3)))
    with pytest.raises(ValueError, match="frames"):
        sharpness_ratio(truth[:2], truth)


def test_synthtalk_boxes_hold_the_mouth_and_eyes_under_head_motion():
    """The boxes from a track (face + pose) contain every pixel that the mouth and the eyes
    change, for a strongly moved, tilted and scaled head."""
    face = sample_person(3, 0).face
    S = 256
    renderer = FaceRenderer(face, S)
    states = [
        FrameState(open=0.8, tx=0.04, ty=-0.03, tilt=8, scale=1.08, gaze_x=1, gaze_y=0.5),
        FrameState(open=0.6, width=0.9, tilt=-8, scale=0.93, tx=-0.04, gaze_x=-1),
    ]
    keys = ("tx", "ty", "tilt", "scale")
    track = {
        "size": S,
        "face": json.loads(json.dumps(face.to_dict())),  # as read back from the JSON
        "pose": {k: [getattr(st, k) for st in states] for k in keys},
    }
    boxes = synthtalk_regions(track)
    assert boxes["mouth"].shape == (2, 1, 4) and boxes["eyes"].shape == (2, 2, 4)

    def inside(mask: np.ndarray, frame_boxes: np.ndarray) -> bool:
        keep = np.zeros_like(mask)
        for x0, y0, x1, y1 in frame_boxes:
            keep[y0:y1, x0:x1] = True
        return mask.any() and not (mask & ~keep).any()

    for i, st in enumerate(states):
        frame = renderer.render(st).astype(int)
        shut = renderer.render(FrameState(**{**vars(st), "open": 0.0, "round": 1.0}))
        blink = renderer.render(FrameState(**{**vars(st), "blink": 1.0}))
        assert inside(np.abs(frame - shut).sum(-1) > 6, boxes["mouth"][i])
        assert inside(np.abs(frame - blink).sum(-1) > 6, boxes["eyes"][i])
    half = synthtalk_regions(track, size=128, frames=1)
    assert half["mouth"].shape == (1, 1, 4)
    assert np.abs(half["mouth"][0] - boxes["mouth"][0] / 2).max() <= 1


def test_eval_vae_reports_sharpness(synth_dataset, tmp_path, capsys):
    from readtalk.cli import main
    from readtalk.vae.model import VideoVAE

    torch.manual_seed(0)
    weights = VideoVAE("debug").save(tmp_path / "vae.safetensors")
    real = next((synth_dataset / "video").glob("*.mp4"))
    out = tmp_path / "vae.json"
    args = ["eval-vae", "--weights", str(weights), "--data", str(synth_dataset), "--real",
            str(real), "--frames", "9", "--clips", "1", "--quiet", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "sharpness" in printed and "mouth" in printed
    res = json.loads(out.read_text())
    for key in ("sharpness", "sharpness_mouth", "sharpness_eyes"):
        assert np.isfinite(res["test"][key]) and res["test"][key] >= 0
    # an untrained decoder paints no face: nothing like the truth's detail
    assert res["test"]["sharpness"] != pytest.approx(1.0, abs=0.05)
    assert np.isfinite(res["real"]["sharpness"]) and "sharpness_mouth" not in res["real"]
