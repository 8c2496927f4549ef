import json

import numpy as np
import pytest
import torch

from readtalk.cli import main
from readtalk.config import load_config
from readtalk.errors import ReadtalkError
from readtalk.eval.pixel import psnr, ssim
from readtalk.media import fit_size
from readtalk.train.vae import VAERunConfig, real_footage, train_vae


def _cfg(data, steps, **kw):
    sets = {
        "data": data,
        "preset": "debug",
        "size": 64,
        "clip_frames": 9,
        "eval_frames": 9,
        "eval_clips": 1,
        "train.steps": steps,
        "train.log_every": 2,
        "train.eval_every": 4,
        "train.ckpt_every": 2,
        "train.batch_size": 1,
        "train.warmup": 2,
        **kw,
    }
    return load_config(VAERunConfig, overrides=[f"{k}={v}" for k, v in sets.items()])


def _losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_vae_training_resumes_exactly(synth_dataset, tmp_path):
    full = train_vae(_cfg(synth_dataset, 6), tmp_path / "full", progress=False)
    assert train_vae(_cfg(synth_dataset, 6), tmp_path / "half", progress=False, stop_at=4) is None
    train_vae(_cfg(synth_dataset, 6), tmp_path / "half", resume=True, progress=False)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "half")
    assert len(_losses(tmp_path / "full")) == 3
    records = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert any("test_psnr" in r for r in records)
    assert full.is_file()


def test_windows_are_decoded_only_as_far_as_they_reach(synth_dataset, monkeypatch):
    import readtalk.train.frames as tv
    from readtalk.data.manifest import load_manifest, resolve
    from readtalk.media import read_video

    records = [r for r in load_manifest(synth_dataset) if r["split"] == "train"]
    stops = []

    def counting(path, stop=None):
        stops.append(stop)
        return read_video(path, stop)

    monkeypatch.setattr(tv, "read_video", counting)
    got = tv.ClipSampler(records, 9, 64, True).sample(3, np.random.default_rng(3))
    assert got.shape == (3, 3, 9, 64, 64) and len(stops) == 3
    rng, want = np.random.default_rng(3), []  # the same windows, each clip decoded whole
    for stop in stops:
        rec = records[int(rng.integers(len(records)))]
        start, flip = int(rng.integers(0, 65 - 9 + 1)), rng.uniform() < 0.5
        assert stop == start + 9
        clip = tv.fit_size(read_video(resolve(rec, "video"))[start:stop], 64)
        want.append(tv.to_tensor(np.ascontiguousarray(clip[:, :, ::-1] if flip else clip)))
    assert torch.equal(got, torch.stack(want))


def test_crops_lie_on_the_latent_grid_and_carry_the_mouth_box(synth_dataset):
    import readtalk.train.frames as tv
    from readtalk.data.manifest import load_manifest

    records = [r for r in load_manifest(synth_dataset) if r["split"] == "train"]
    whole = tv.ClipSampler(records, 1, 256, True)
    every, mouth = tv.ClipSampler(records, 1, 256, True, crop=128)._offsets(256, 256)
    assert len(every) == 25 and all(y % 32 == 0 and x % 32 == 0 for y, x in every)
    assert mouth == [(96, 64), (128, 64)]  # the crops that hold x 87-169, y 141-195
    video, box = whole.sample_with_box(2, np.random.default_rng(0))
    assert box.shape == (2, 1, 1, 256, 256) and box.sum() == 2 * (169 - 87) * (195 - 141)
    sampler = tv.ClipSampler(records, 1, 256, True, crop=128, crop_mouth=1.0)
    video, box = sampler.sample_with_box(6, np.random.default_rng(1))
    assert video.shape == (6, 3, 1, 128, 128) and box.shape == (6, 1, 1, 128, 128)
    assert (box.flatten(1).sum(1) == (169 - 87) * (195 - 141)).all()  # the whole box, each
    # the same draws without the crop give the same frames, of which these are crops
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    one = tv.ClipSampler(records, 1, 256, False, crop=128, crop_mouth=0.0)
    crop = one.sample(1, rng_a)
    rec = records[int(rng_b.integers(len(records)))]
    start = int(rng_b.integers(0, 65))
    u = rng_b.uniform(), rng_b.uniform()
    y0, x0 = every[min(int(u[1] * 25), 24)]
    frame = tv.to_tensor(read_video_at(rec, start))[None]
    assert torch.equal(crop, frame[..., y0 : y0 + 128, x0 : x0 + 128])
    with pytest.raises(ReadtalkError, match="crop must be 0 or a multiple of 32"):
        _cfg(synth_dataset, 2, crop=100).validate()
    with pytest.raises(ReadtalkError, match="larger than the 64x64 frames"):
        tv.ClipSampler(records, 1, 64, True, crop=128).sample(1, np.random.default_rng(0))


def read_video_at(rec, start):
    from readtalk.data.manifest import resolve
    from readtalk.media import read_video

    return np.ascontiguousarray(read_video(resolve(rec, "video"))[start : start + 1])


def test_cropped_training_with_mouth_weight_runs_and_evaluates_whole_frames(
    synth_dataset, tmp_path
):
    cfg = _cfg(
        synth_dataset,
        4,
        clip_frames=1,
        eval_frames=1,
        size=128,
        crop=64,
        crop_mouth=0.5,
        mouth_weight=10,
    )
    train_vae(cfg, tmp_path / "crop", progress=False)
    records = [json.loads(x) for x in (tmp_path / "crop/metrics.jsonl").read_text().splitlines()]
    assert any("test_psnr" in r for r in records)
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)


def test_frame_bank_holds_evenly_spaced_frames_and_resumes_exactly(synth_dataset, tmp_path):
    import readtalk.train.frames as tv
    from readtalk.data.manifest import load_manifest
    from readtalk.media import to_uint8

    records = [r for r in load_manifest(synth_dataset) if r["split"] == "train"]
    sampler = tv.ClipSampler(records, 1, 64, False, bank=3)
    got = sampler.sample(8, np.random.default_rng(0))
    bank = sampler._frame_bank()
    assert bank.shape == (len(records), 3, 64, 64, 3)
    first = tv.fit_size(read_video_at(records[0], 0), 64)[0]
    last = tv.fit_size(read_video_at(records[0], 64), 64)[0]  # 65 frames: 0, 32 and 64
    assert np.array_equal(bank[0, 0], first) and np.array_equal(bank[0, 2], last)
    flat = {bytes(f.tobytes()) for f in bank.reshape(-1, 64, 64, 3)}
    assert all(bytes(to_uint8(x)[0].tobytes()) in flat for x in got)  # every frame from it
    with pytest.raises(ReadtalkError, match="a frame bank needs single frames"):
        tv.ClipSampler(records, 9, 64, False, bank=3)
    with pytest.raises(ReadtalkError, match="frame_bank must be >= 0 and needs clip_frames=1"):
        _cfg(synth_dataset, 2, frame_bank=4).validate()
    kw = dict(clip_frames=1, eval_frames=1, frame_bank=4, crop=32, crop_mouth=0.5)
    train_vae(_cfg(synth_dataset, 6, **kw), tmp_path / "full", progress=False)
    assert (
        train_vae(_cfg(synth_dataset, 6, **kw), tmp_path / "half", progress=False, stop_at=4)
        is None
    )
    train_vae(_cfg(synth_dataset, 6, **kw), tmp_path / "half", resume=True, progress=False)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "half")


def test_vae_config_errors(synth_dataset):
    with pytest.raises(ReadtalkError, match=r"clip_frames must be 8k\+1"):
        _cfg(synth_dataset, 2, clip_frames=8).validate()
    with pytest.raises(ReadtalkError, match="multiple of 32"):
        _cfg(synth_dataset, 2, size=100).validate()


def test_cli_train_and_eval_vae(synth_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    sets = ["size=64", "clip_frames=9", "eval_clips=1", "eval_frames=9", "train.batch_size=1"]
    train = [
        "train",
        "vae",
        "--data",
        str(synth_dataset),
        "--out",
        str(out),
        "--steps",
        "2",
        "--preset",
        "debug",
        "--quiet",
        *[x for kv in sets for x in ("--set", kv)],
    ]
    assert main(train) == 0
    evaluate = [
        "eval-vae",
        "--weights",
        str(out / "vae.safetensors"),
        "--data",
        str(synth_dataset),
        "--clips",
        "1",
        "--quiet",
        "--frames",
    ]
    assert main([*evaluate, "9"]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main([*evaluate, "10"]) == 2
    assert "8k+1" in capsys.readouterr().err


def test_fit_size_and_real_footage(tmp_path):
    from readtalk.media import write_video

    frames = np.random.default_rng(0).integers(0, 255, (9, 100, 150, 3), dtype=np.uint8)
    assert fit_size(frames, 64).shape == (9, 64, 64, 3)
    write_video(tmp_path / "r.mp4", frames)
    video = real_footage(tmp_path / "r.mp4", 9)
    assert video.shape == (3, 9, 96, 128) and video.min() >= -1 and video.max() <= 1
    with pytest.raises(ReadtalkError, match="fewer"):
        real_footage(tmp_path / "r.mp4", 17)


def test_psnr_ssim_against_known_values():
    a = torch.rand(2, 3, 40, 48)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert psnr(a, (a + 0.1).clamp(0, 1)) == pytest.approx(20.0, abs=0.8)
    noisy = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert ssim(a, noisy) < ssim(a, (a + 0.05 * torch.randn_like(a)).clamp(0, 1)) < 1
    skm = pytest.importorskip("skimage.metrics")
    x, y = a[0].permute(1, 2, 0).numpy(), noisy[0].permute(1, 2, 0).numpy()
    ref = skm.structural_similarity(
        x,
        y,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
    )
    assert ssim(a[:1], noisy[:1]) == pytest.approx(ref, abs=1e-4)


def test_overrides_parse_numbers_and_nested_keys():
    cfg = load_config(
        VAERunConfig, overrides=["train.lr=5e-4", "train.steps=7", "flip=false", "preset=small"]
    )
    assert cfg.train.lr == 5e-4 and cfg.train.steps == 7 and cfg.flip is False
    assert cfg.train.batch_size == VAERunConfig().train.batch_size  # other defaults kept
    with pytest.raises(ReadtalkError, match="expected int"):
        load_config(VAERunConfig, overrides=["train.steps=many"])


def test_motion_weights_mark_what_moves():
    from readtalk.train.frames import motion_weights

    video = torch.zeros(1, 3, 9, 32, 32)
    video[:, :, ::2, 10:14, 20:24] = 0.8  # a blinking square
    w = motion_weights(video, weight=10.0, scale=0.1, dilate=5)
    assert w.shape == (1, 1, 9, 32, 32)
    assert torch.allclose(w[..., 11, 21], torch.full((1, 1, 9), 11.0))  # inside: 1 + 10
    assert torch.allclose(w[..., 10, 18], torch.full((1, 1, 9), 11.0))  # within the dilation
    assert torch.equal(w[..., :5, :], torch.ones(1, 1, 9, 5, 32))  # still pixels weigh 1


def test_mouth_box_weights_and_their_training(synth_dataset, tmp_path):
    """mouth_weight: a fixed box (fractions of the frame) weighs 1 + mouth_weight; it combines
    with the motion weight, trains, and bad boxes are one-line errors."""
    from readtalk.train.frames import box_weights

    w = box_weights(torch.Size([2, 3, 9, 40, 50]), (0.2, 0.5, 0.6, 0.75), 4.0)
    assert w.shape == (1, 1, 1, 40, 50)
    assert w[0, 0, 0, 20:30, 10:30].eq(5.0).all() and w.sum() == 40 * 50 + 4.0 * 10 * 20
    assert w[0, 0, 0, 19, 10] == 1 and w[0, 0, 0, 20, 30] == 1  # the box ends where it says
    cfg = _cfg(synth_dataset, 3, motion_weight=5.0, mouth_weight=10.0, size=0)
    train_vae(cfg, tmp_path / "r", progress=False)
    saved = (tmp_path / "r/config.yaml").read_text()
    assert "mouth_weight: 10.0" in saved and "mouth_box" in saved
    for bad in [{"mouth_weight": -1.0}, {"mouth_box": [0.5, 0.5, 0.4, 0.8]}, {"mouth_box": [0.1]}]:
        with pytest.raises(ReadtalkError, match="mouth_box"):
            _cfg(synth_dataset, 2, **bad).validate()


def test_delta_loss_penalises_a_still_reconstruction(synth_dataset, tmp_path):
    """delta_weight: the loss on frame-to-frame change is logged and added; bad values and a
    one-frame window are one-line errors."""
    cfg = _cfg(synth_dataset, 3, motion_weight=5.0, delta_weight=2.0, size=0)
    train_vae(cfg, tmp_path / "r", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if "delta" in r)
    assert row["delta"] > 0
    assert row["loss"] == pytest.approx(
        row["rec"] + 1e-6 * row["kl"] + 2.0 * row["delta"], rel=1e-5
    )
    for bad in [{"delta_weight": -1.0}, {"delta_weight": 1.0, "clip_frames": 1}]:
        with pytest.raises(ReadtalkError, match="delta_weight"):
            _cfg(synth_dataset, 2, **bad).validate()


def test_motion_weighted_training_reports_mouth_scores(synth_dataset, tmp_path):
    """With motion_weight the run trains; on SynthTalk data evaluation adds the mouth scores."""
    train_vae(_cfg(synth_dataset, 4, motion_weight=10.0, size=0), tmp_path / "r", progress=False)
    records = [json.loads(x) for x in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    ev = next(r for r in records if "test_psnr" in r)
    assert 0.0 <= ev["test_mouth_visible"] <= 1.0 and "test_mouth_corr" in ev
    with pytest.raises(ReadtalkError, match="motion_weight"):
        _cfg(synth_dataset, 2, motion_weight=-1).validate()
