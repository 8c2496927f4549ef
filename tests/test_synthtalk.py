import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from readtalk.cli import main
from readtalk.data.manifest import load_manifest, load_track, resolve
from readtalk.data.synthtalk import SynthConfig, dataset, generate
from readtalk.errors import ReadtalkError
from readtalk.media import load_audio, probe, read_image, read_video


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "synthtalk.json"
    }


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    cfg = SynthConfig(clips=3, size=64, frames=33, seed=5)
    a = generate(cfg.__class__(**{**cfg.__dict__, "workers": 1}), tmp_path / "a", progress=False)
    b = generate(cfg.__class__(**{**cfg.__dict__, "workers": 2}), tmp_path / "b", progress=False)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    assert all(fa[k] == fb[k] for k in fa if not k.endswith(".mp4"))  # wav, png, json: bytes
    for k in (k for k in fa if k.endswith(".mp4")):
        assert np.array_equal(read_video(a / k), read_video(b / k))
    c = generate(
        SynthConfig(clips=3, size=64, frames=33, seed=6, workers=1), tmp_path / "c", progress=False
    )
    assert (c / "track/000000.json").read_bytes() != fa["track/000000.json"]


def test_layout_and_manifest(synth_dataset):
    recs = load_manifest(synth_dataset)
    assert [r["id"] for r in recs] == [f"{i:06d}" for i in range(6)]
    for r in recs:
        for key in ("video", "ref", "track", "audio"):
            assert resolve(r, key).is_file()
        ref = read_image(resolve(r, "ref"))
        assert ref.shape == (256, 256, 3)
        track = load_track(r)
        assert len(track["mouth"]["open"]) == len(track["pose"]["tx"]) == 65
        assert track["phonemes"] and track["text"] and track["face"]["skin"]


def test_frame_count_is_25x_audio_duration_and_streams_agree(synth_dataset):
    for r in load_manifest(synth_dataset):
        info = probe(resolve(r, "video"))
        wav, sr = sf.read(resolve(r, "audio"))
        assert sr == 16000
        assert info.frames == 65 == round(25 * len(wav) / sr)
        assert len(wav) == 65 * 640
        assert info.fps == 25
        assert abs(info.audio_duration - info.duration) < 1 / 25
        decoded = load_audio(resolve(r, "video"))
        assert abs(len(decoded) - len(wav)) <= 1024  # one AAC frame at most
        assert np.corrcoef(decoded[:20000], wav[:20000])[0, 1] > 0.9  # same speech, in sync


def test_mouth_opens_with_voiced_speech(synth_dataset):
    opens, energy = [], []
    for r in load_manifest(synth_dataset):
        t = load_track(r)
        opens.append(np.array(t["mouth"]["open"]))
        energy.append(np.array(t["energy"]))
    o, e = np.concatenate(opens), np.concatenate(energy)
    e_smooth = np.convolve(e, np.ones(3) / 3, mode="same")
    assert np.corrcoef(o, e_smooth)[0, 1] > 0.3
    # pauses (silent over 280 ms, not just a stop closure) close the mouth; speech opens it
    pause = np.convolve(e, np.ones(7) / 7, mode="same") < 0.01 * e.max()
    loud = e > 0.2 * e.max()
    assert pause.sum() > 5 and loud.sum() > 20
    assert o[loud].mean() > 4 * o[pause].mean()
    assert o[pause].mean() < 0.08


def test_split_by_identity(synth_dataset):
    recs = load_manifest(synth_dataset)
    train = {r["identity"] for r in recs if r["split"] == "train"}
    test = {r["identity"] for r in recs if r["split"] == "test"}
    assert train and test and not train & test
    assert train | test == {0, 1, 2}
    summary = json.loads((synth_dataset / "synthtalk.json").read_text())
    assert set(summary["test_identities"]) == test


def test_long_clip_of_a_minute(tmp_path):
    out = generate(
        SynthConfig(clips=1, size=64, frames=1505, seed=2, workers=1),
        tmp_path / "l",
        progress=False,
    )
    t = json.loads((out / "track/000000.json").read_text())
    assert len(t["mouth"]["open"]) == 1505 and t["duration"] == pytest.approx(60.2)
    assert t["phonemes"][-1]["end"] > 55  # speech fills the minute
    assert len(t["text"].split(".")) > 5  # many sentences
    assert probe(out / "video/000000.mp4").frames == 1505


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 100}, "multiple of 32"),
        ({"size": 0}, "multiple of 32"),
        ({"clips": 0}, "--clips must be positive"),
        ({"frames": 120}, r"8k\+1"),
        ({"frames": -7}, "--frames must be positive"),
        ({"workers": -1}, "--workers"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, kwargs, message):
    with pytest.raises(ReadtalkError, match=message):
        generate(SynthConfig(**kwargs), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_any_length_allows_other_frame_counts():
    SynthConfig(frames=120, any_length=True).validate()


def test_existing_folder_with_content_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ReadtalkError, match="not empty"):
        generate(SynthConfig(clips=1, size=64, frames=33), tmp_path / "x", progress=False)
    assert os.listdir(tmp_path / "x") == ["keep.txt"]


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    real = dataset.make_clip

    def flaky(cfg, index, out, split):
        if index == 1:
            raise RuntimeError("disk full")
        return real(cfg, index, out, split)

    monkeypatch.setattr(dataset, "make_clip", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(
            SynthConfig(clips=3, size=64, frames=33, workers=1), tmp_path / "x", progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_and_errors(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path / "d"),
                "--clips",
                "2",
                "--size",
                "64",
                "--frames",
                "33",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert "wrote 2 clips" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "e"), "--size", "96", "--frames", "30"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert main(["synth", "--out", str(tmp_path / "d"), "--clips", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(
            [
                "sheet",
                "--data",
                str(tmp_path / "d"),
                "--out",
                str(tmp_path / "s.png"),
                "--per-clip",
                "3",
            ]
        )
        == 0
    )
    assert read_image(tmp_path / "s.png").shape[1] > 4 * 64
    assert main(["sheet", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "t.png")]) == 2
