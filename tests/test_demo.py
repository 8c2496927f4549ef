"""readtalk demo: with a model folder it generates demo.mp4 (+ the SynthTalk truth); without one
it falls back to a SynthTalk sample."""

import pytest

from readtalk.cli import main
from readtalk.demo import default_model_dir, has_model, run_demo
from readtalk.errors import ReadtalkError
from readtalk.media import load_audio, probe
from test_pipeline import _speech, _write_models


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _write_models(tmp_path_factory.mktemp("demo") / "model")


def test_demo_with_a_model_folder(model, tmp_path, capsys):
    assert main(["demo", "--model", str(model), "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "real-time factor" in out and "truth.mp4" in out
    video, truth = probe(tmp_path / "d/demo.mp4"), probe(tmp_path / "d/truth.mp4")
    # the generated video covers the SynthTalk sentence: one frame per 40 ms of its speech
    assert video.frames == truth.frames == 121 and video.fps == 25
    assert len(load_audio(tmp_path / "d/demo.mp4")) == 121 * 640


def test_demo_inputs_and_errors(model, tmp_path):
    res = run_demo(tmp_path / "a", model, progress=False, seed=3)
    assert res["rtf"] > 0 and "truth" in res and res["text"]
    # given audio: the video follows its length, and no truth is written

    from readtalk.media import save_wav

    save_wav(tmp_path / "s.wav", _speech(16000))
    res = run_demo(tmp_path / "b", model, audio=tmp_path / "s.wav", progress=False)
    assert res["frames"] == 25 and "truth" not in res
    with pytest.raises(ReadtalkError, match="not a model folder"):
        run_demo(tmp_path / "c", tmp_path / "nothing")


def test_demo_without_a_model_writes_a_synthtalk_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("readtalk.demo.default_model_dir", lambda: tmp_path / "none")
    assert main(["demo", "--out", str(tmp_path / "d"), "--clips", "2", "--size", "64"]) == 0
    assert "no trained demo model" in capsys.readouterr().out
    assert (tmp_path / "d/sheet.png").is_file()
    assert default_model_dir().name == "demo" and not has_model(tmp_path)


def test_the_shipped_demo_model(tmp_path):
    """The model in the package loads, fits the 50 MB budget and draws the held-out identity it
    is given (SynthTalk's thumbnail identity score; another person scores far lower)."""
    from readtalk.demo import synth_inputs
    from readtalk.eval.lipsync import thumbnail_identity
    from readtalk.media import read_image, read_video
    from readtalk.pipeline import Pipeline

    mdir = default_model_dir()
    assert has_model(mdir)
    assert sum(p.stat().st_size for p in mdir.iterdir()) <= 50e6
    pipe = Pipeline.from_pretrained(mdir)
    st = pipe.settings()
    assert pipe.size == 256 and st.schedule == "rolling" and st.guidance == "none"
    assert st.steps == 3 and st.context_latents == 2
    # the clip-schedule DiT of the previous demo model ships beside it
    clips = Pipeline.from_files(
        vae=mdir / "vae.safetensors", speech=mdir / "speechae.safetensors",
        dit=mdir / "dit-clips.safetensors",
    )  # fmt: skip
    assert clips.settings().schedule == "clips" and clips.settings().clip_frames == 57
    made = synth_inputs(tmp_path, pipe.size, seed=0)
    res = pipe.generate_to_file(made["image"], made["audio"], tmp_path / "d.mp4", progress=False)
    frames, truth = read_video(res.path), read_video(made["truth"])
    assert frames.shape == truth.shape
    assert thumbnail_identity(frames, read_image(made["image"])).mean() > 0.75
