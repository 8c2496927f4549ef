"""readtalk eval: the network-free metrics, and the runner on a small SynthTalk dataset."""

import json
import shutil

import numpy as np
import pytest
import torch

from readtalk.cli import main
from readtalk.errors import ReadtalkError
from readtalk.eval import lipsync
from readtalk.eval.suite import EvalConfig, boundaries, evaluate
from readtalk.media import read_video, write_video


def test_mouth_sync_finds_a_planted_offset():
    rng = np.random.default_rng(0)
    true = np.convolve(rng.random(200), np.ones(5) / 5, mode="same")
    m = lipsync.mouth_sync(true, true)
    assert m.corr == pytest.approx(1.0) and m.mae == 0 and m.offset == 0
    late = np.concatenate([np.zeros(3), true[:-3]])  # the video shows each frame 3 frames late
    m = lipsync.mouth_sync(late, true, max_offset=5)
    assert m.offset == 3 and m.best_corr == pytest.approx(1.0) and m.corr < 0.9
    early = np.concatenate([true[2:], np.zeros(2)])
    assert lipsync.mouth_sync(early, true).offset == -2
    assert np.isnan(lipsync.mouth_sync(np.zeros(50), true[:50]).corr)  # a mouth that never moves


def test_seam_ratio_sees_jumps_at_clip_starts_only():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (1, 32, 32, 3)).astype(np.float32)
    drift = np.cumsum(rng.normal(0, 0.5, (60, 1, 1, 1)), axis=0)
    frames = np.clip(base + drift, 0, 255).astype(np.uint8)
    changes = lipsync.frame_changes(frames)
    assert lipsync.seam_ratio(changes, [20, 40]) < 2.5  # nothing special there
    jumpy = frames.copy()
    jumpy[20:] = np.clip(jumpy[20:].astype(int) + 40, 0, 255)
    jumpy[40:] = np.clip(jumpy[40:].astype(int) - 40, 0, 255)
    assert lipsync.seam_ratio(lipsync.frame_changes(jumpy), [20, 40]) > 10
    assert np.isnan(lipsync.seam_ratio(changes, []))


def test_boundaries_follow_the_pipelines_clip_plan():
    cfg = EvalConfig(clip_frames=121, motion_latents=1)
    assert boundaries(121, cfg) == []
    # a clip of 121 frames, then clips whose first latent (one frame, decoded again and
    # dropped) is the previous clip's last: 120 new frames each
    assert boundaries(400, cfg) == [121, 241, 361]
    assert boundaries(400, EvalConfig(motion_latents=0)) == [121, 242, 363]


@pytest.fixture(scope="module")
def preds(synth_dataset, tmp_path_factory):
    """Generated videos standing in: the true test videos, and one with another clip's face."""
    root = tmp_path_factory.mktemp("pred")
    recs = [json.loads(x) for x in (synth_dataset / "manifest.jsonl").read_text().splitlines()]
    good = root / "good"
    good.mkdir()
    for r in recs[:2]:
        shutil.copy(synth_dataset / r["video"], good / f"{r['id']}.mp4")
    swapped = root / "swapped"
    swapped.mkdir()
    a, b = recs[0], next(r for r in recs if r["identity"] != recs[0]["identity"])
    shutil.copy(synth_dataset / b["video"], swapped / f"{a['id']}.mp4")
    return good, swapped, recs


def test_eval_of_true_videos_is_near_perfect(synth_dataset, preds, tmp_path):
    good, swapped, _ = preds
    rep = evaluate(good, synth_dataset, tmp_path / "good", EvalConfig(), progress=False)
    assert rep["count"] == 2
    assert rep["mouth_corr"] > 0.95 and rep["av_offset"] == 0 and rep["mouth_mae"] < 0.01
    assert rep["psnr"] == pytest.approx(100.0) and rep["ssim"] == pytest.approx(1.0)
    for key in ("sharpness", "sharpness_mouth", "sharpness_eyes"):  # the same frames: exactly 1
        assert rep[key] == 1.0 and all(v[key] == 1.0 for v in rep["videos"].values())
    for key in ("sync_c", "sync_d", "fid", "fvd", "seam_ratio"):
        assert key in rep["skipped"] and key not in rep
    # the true mouth against the clip's own speech (reference-free; docs/eval.md)
    assert rep["energy_corr"] > 0.4 and 0.3 < rep["open_fraction"] < 1 and rep["energy_lag"] <= 3
    assert all(
        {"energy_corr", "energy_lag", "open_fraction"} <= set(v) for v in rep["videos"].values()
    )
    saved = json.loads((tmp_path / "good" / "metrics.json").read_text())
    assert saved["mouth_corr"] == rep["mouth_corr"] and set(saved["videos"]) == set(rep["videos"])
    assert (tmp_path / "good" / "mouth_tracks.png").stat().st_size > 1000
    # truth over generated at the most open and most closed true mouths: 2 videos x 2 rows
    from readtalk.media import read_image

    sheet = read_image(tmp_path / "good" / "lipsync_sheet.png")
    assert sheet.shape[0] > 4 * 32 and sheet.shape[1] > 8 * 32

    # another person's video under this id: identity, pixels and lip sync all drop
    bad = evaluate(swapped, synth_dataset, tmp_path / "swap", EvalConfig(), progress=False)
    one = rep["videos"][next(iter(bad["videos"]))]
    assert bad["identity"] < one["identity"] - 0.1
    assert bad["psnr"] < 25 and bad["mouth_corr"] < 0.5


def test_sheet_frames_pick_open_and_closed_moments():
    from readtalk.eval.suite import sheet_frames

    gap = np.zeros(100)
    gap[[10, 11, 40, 70, 90]] = [0.5, 0.6, 0.4, 0.3, 0.2]
    idx = sheet_frames(gap, k=2, spacing=5)
    assert list(idx) == sorted(idx) and len(idx) == 4
    assert {11, 40} <= set(idx)  # the two most open, 10 being too close to 11
    assert all(gap[i] == 0 for i in set(idx) - {11, 40})


def test_eval_with_syncnet_seams_and_windows(synth_dataset, preds, tmp_path):
    from readtalk.eval.syncnet import SYNCNET_SIZES, SyncNet

    good, _, recs = preds
    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNet(SYNCNET_SIZES["debug"]).state_dict(), weights)
    # short clips so that these 65-frame videos span several of them
    cfg = EvalConfig(syncnet=str(weights), syncnet_size="debug", clip_frames=17, window=32)
    rep = evaluate(good, synth_dataset, tmp_path / "out", cfg, progress=False)
    assert np.isfinite(rep["sync_c"]) and rep["sync_d"] > 0
    assert rep["seam_ratio"] < 3  # true videos have no seams
    wins = rep["windows"][recs[0]["id"]]
    assert [w["start"] for w in wins] == [0, 32, 64][: len(wins)] and "mouth_corr" in wins[0]
    assert (tmp_path / "out" / "seams.png").is_file()
    assert (tmp_path / "out" / "windows.png").is_file()


def test_eval_against_a_folder_of_videos(preds, tmp_path, capsys):
    good, _, recs = preds
    ref = tmp_path / "ref"
    shutil.copytree(good, ref)
    v = read_video(ref / f"{recs[0]['id']}.mp4")
    write_video(ref / f"{recs[0]['id']}.mp4", v[:, ::-1])  # mirrored: pixels differ
    assert main(["eval", "--pred", str(good), "--ref", str(ref), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "psnr" in out and "mouth_corr      skipped" in out and "identity        skipped" in out
    assert "sharpness       " in out and "sharpness_mouth skipped" in out
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["sharpness"] == pytest.approx(1.0, abs=0.05)  # mirrored: the same detail
    assert "SynthTalk" in saved["skipped"]["sharpness_eyes"]


def test_eval_sees_a_blurred_mouth(synth_dataset, preds, tmp_path, capsys):
    """A prediction blurred inside the mouth box only: the mouth's sharpness falls, the eyes'
    stays near 1, and PSNR barely notices."""
    import cv2

    from readtalk.data.manifest import load_manifest, load_track, resolve
    from readtalk.eval.regions import synthtalk_regions

    _, _, recs = preds
    rec = next(r for r in load_manifest(synth_dataset) if r["id"] == recs[0]["id"])
    frames = read_video(resolve(rec, "video"))
    boxes = synthtalk_regions(load_track(rec))["mouth"][:, 0]
    blurred = frames.copy()
    for f, (x0, y0, x1, y1) in zip(blurred, boxes, strict=False):
        f[y0:y1, x0:x1] = cv2.GaussianBlur(f, (0, 0), 2.5)[y0:y1, x0:x1]
    pred = tmp_path / "pred"
    pred.mkdir()
    write_video(pred / f"{rec['id']}.mp4", blurred)
    assert main(["eval", "--pred", str(pred), "--ref", str(synth_dataset), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "sharpness_mouth" in printed
    rep = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert rep["sharpness_mouth"] < 0.5 < 0.8 < rep["sharpness_eyes"]
    assert rep["sharpness_mouth"] < rep["sharpness"] < 1 and rep["psnr"] > 30
    assert "sharpness" in rep["windows"][rec["id"]][0]


def test_eval_bad_inputs(synth_dataset, preds, tmp_path):
    good, _, _ = preds
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadtalkError, match=r"no \.mp4 files"):
        evaluate(tmp_path / "empty", synth_dataset, tmp_path / "o")
    with pytest.raises(ReadtalkError, match="not found"):
        evaluate(tmp_path / "nope", synth_dataset, tmp_path / "o")
    stray = tmp_path / "stray"
    stray.mkdir()
    shutil.copy(next(good.glob("*.mp4")), stray / "unknown.mp4")
    with pytest.raises(ReadtalkError, match="no reference"):
        evaluate(stray, synth_dataset, tmp_path / "o")
    with pytest.raises(ReadtalkError, match="8k\\+1"):
        evaluate(good, synth_dataset, tmp_path / "o", EvalConfig(clip_frames=20))


def test_mouth_darkness_survives_blur_that_blinds_the_reader(synth_dataset):
    import cv2

    from readtalk.data.manifest import load_manifest, load_track, resolve
    from readtalk.data.synthtalk.mouth_reader import read_mouth

    rec = load_manifest(synth_dataset, "train")[0]
    video = read_video(resolve(rec, "video"))
    gap = np.asarray(load_track(rec)["measures"]["gap"])
    x, y = lipsync.locate_mouth(video)
    centres = [read_mouth(f).center for f in video]
    cx, cy = np.mean([c for c in centres if c is not None], axis=0) * video.shape[1]
    assert abs(x - cx) < 12 and abs(y - cy) < 12  # the spot that moves is the mouth
    assert lipsync.pearson(gap, lipsync.mouth_darkness(video, (x, y))) > 0.85
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 6) for f in video])
    assert sum(read_mouth(f).gap > 0 for f in blurred) < len(video) // 4
    assert lipsync.pearson(gap, lipsync.mouth_darkness(blurred, (x, y))) > 0.7


def test_a_still_mouth_is_counted_not_hidden(synth_dataset, preds, tmp_path, capsys):
    """A video whose mouth never moves has no correlation to average: mouth_corr leaves it out,
    mouth_still counts it, mouth_corr_all scores it 0."""
    good, _, recs = preds
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(good / f"{recs[0]['id']}.mp4", mixed / f"{recs[0]['id']}.mp4")
    frames = read_video(good / f"{recs[1]['id']}.mp4")
    still = np.repeat(frames[:1], len(frames), axis=0)  # the first frame held: the mouth is still
    write_video(mixed / f"{recs[1]['id']}.mp4", still, fps=25)
    rep = evaluate(mixed, synth_dataset, tmp_path / "m", EvalConfig(), progress=False)
    one = rep["videos"][recs[0]["id"]]["mouth_corr"]
    assert rep["videos"][recs[1]["id"]]["mouth_corr"] is None
    assert rep["videos"][recs[1]["id"]]["mouth_still"] and rep["mouth_still"] == 1
    assert rep["mouth_corr"] == pytest.approx(one)
    assert rep["mouth_corr_all"] == pytest.approx(one / 2)
    assert main(["eval", "--pred", str(mixed), "--ref", str(synth_dataset), "--out",
                 str(tmp_path / "cli"), "--quiet"]) == 0  # fmt: skip
    assert "never moves in 1" in capsys.readouterr().out
    good_rep = evaluate(good, synth_dataset, tmp_path / "g", EvalConfig(), progress=False)
    assert good_rep["mouth_still"] == 0 and good_rep["mouth_corr_all"] == good_rep["mouth_corr"]


def _speech_like(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise whose level goes up and down like syllables, with pauses: (audio, amplitude per
    frame)."""
    rng = np.random.default_rng(seed)
    amp = 0.05 + np.convolve(rng.random(frames), np.ones(4) / 4, mode="same")
    amp[np.repeat(rng.random(frames // 10) < 0.25, 10)[:frames]] = 0.0  # pauses: silence
    audio = rng.normal(0, 1, frames * 640) * np.repeat(amp, 640) * 0.3
    return audio.astype(np.float32), amp


def test_mouth_energy_follows_a_gap_made_of_the_energy():
    audio, _ = _speech_like(250, 0)
    energy = lipsync.frame_energy(audio, 250)
    m0 = lipsync.mouth_energy(np.zeros(250), audio)
    floor = m0.threshold_db
    gap = np.convolve(np.maximum(energy, floor) - floor, [0.25, 0.5, 0.25], mode="same") / 300
    m = lipsync.mouth_energy(gap, audio)
    assert m.energy_corr > 0.9 and m.lag == 0 and m.reason == ""
    assert m.voiced.mean() > 0.7 and m.open_fraction > 0.5 and m.open_unvoiced < 0.5
    late = np.concatenate([np.zeros(2), gap[:-2]])  # the mouth moves 2 frames after the sound
    m = lipsync.mouth_energy(late, audio)
    assert m.lag == 2 and m.energy_corr > 0.9 and m.corr_at_zero < m.energy_corr
    shuffled = np.random.default_rng(1).permutation(gap)
    assert abs(lipsync.mouth_energy(shuffled, audio).energy_corr) < 0.25
    # a mouth that never moves: open on no voiced frame, no correlation, and the reason
    assert m0.open_fraction == 0 and np.isnan(m0.energy_corr) and "never moves" in m0.reason


def test_mouth_energy_open_fraction_and_silence():
    audio, amp = _speech_like(100, 2)
    voiced = lipsync.mouth_energy(np.zeros(100), audio).voiced
    gap = np.where(voiced, 0.05, 0.0)  # open exactly while there is speech
    m = lipsync.mouth_energy(gap, audio)
    assert m.open_fraction == 1.0 and m.open_unvoiced == 0.0
    assert not voiced[amp == 0].any()  # pauses are not voiced
    m = lipsync.mouth_energy(gap * 0.3, audio)  # parted by less than OPEN_GAP: not open
    assert m.open_fraction == 0.0 and m.energy_corr > 0.5
    quiet = lipsync.mouth_energy(gap, audio * 1e-2)  # the threshold is relative to the level
    assert np.array_equal(quiet.voiced, voiced)
    silent = lipsync.mouth_energy(gap, np.zeros(100 * 640, np.float32))
    assert np.isnan(silent.open_fraction) and np.isnan(silent.energy_corr)
    assert "silent" in silent.reason and silent.open_unvoiced == voiced.mean()  # all unvoiced
    short = lipsync.mouth_energy(gap, audio[:6400])  # audio ends early: the rest is silence
    assert short.energy.size == 100 and not short.voiced[10:].any()


def test_energy_measures_need_audio_and_a_face_the_reader_reads(synth_dataset, preds, tmp_path):
    """energy_corr / open_fraction with a non-SynthTalk reference: skipped by default (the
    mouth reader reads SynthTalk-like faces only), scored with mouth_reader="on" as against
    the SynthTalk reference; a silent video says why it has no correlation."""
    good, _, recs = preds
    ref = tmp_path / "ref"
    shutil.copytree(good, ref)
    auto = evaluate(good, ref, tmp_path / "a", EvalConfig(), progress=False)
    assert "energy_corr" not in auto and "mouth reader" in auto["skipped"]["open_fraction"]
    on = evaluate(good, ref, tmp_path / "on", EvalConfig(mouth_reader="on"), progress=False)
    synth = evaluate(good, synth_dataset, tmp_path / "s", EvalConfig(), progress=False)
    for key in ("energy_corr", "energy_lag", "open_fraction"):
        assert on[key] == pytest.approx(synth[key]) and key not in on["skipped"]
    off = evaluate(
        good, synth_dataset, tmp_path / "o", EvalConfig(mouth_reader="off"), progress=False
    )
    assert "energy_corr" in off["skipped"] and off["mouth_corr"] == synth["mouth_corr"]
    silent = tmp_path / "silent"
    silent.mkdir()
    frames = read_video(good / f"{recs[0]['id']}.mp4")
    write_video(silent / f"{recs[0]['id']}.mp4", frames, np.zeros(len(frames) * 640, np.float32))
    rep = evaluate(silent, synth_dataset, tmp_path / "q", EvalConfig(), progress=False)
    video = rep["videos"][recs[0]["id"]]
    assert video["energy_corr"] is None and "silent" in video["energy_note"]
    assert "silent" in rep["skipped"]["energy_corr"] and "open_fraction" in rep["skipped"]
    with pytest.raises(ReadtalkError, match="mouth_reader"):
        evaluate(good, synth_dataset, tmp_path / "x", EvalConfig(mouth_reader="maybe"))
