"""readtalk live (file or PCM on stdin -> a growing mp4) and readtalk bench stream; the demo
model's face in pauses."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from readtalk.cli import main
from readtalk.errors import ReadtalkError
from readtalk.live import bench_stream, frame_timing, pcm_pieces, run_live, speech_for
from readtalk.media import SAMPLES_PER_FRAME, load_audio, probe, read_video, save_wav
from readtalk.pipeline import Pipeline
from test_pipeline import _face, _speech, _write_models

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _write_models(tmp_path_factory.mktemp("m") / "m")


def test_pcm_pieces_read_s16le_as_it_arrives():
    x = np.array([0, 16384, -32768, 32767, 1], "<i2")
    got = list(pcm_pieces(io.BytesIO(x.tobytes() + b"\x01"), 2))  # a stray odd byte at the end
    assert [len(p) for p in got] == [2, 2, 1]
    assert np.allclose(np.concatenate(got), x / 32768.0)


def test_run_live_writes_a_growing_mp4_with_the_offline_frames(model_dir, tmp_path):
    pipe = Pipeline.from_pretrained(model_dir)
    audio = _speech(40 * SAMPLES_PER_FRAME + 100, seed=1)
    out = tmp_path / "live.mp4"
    rep = run_live(pipe, _face(), (audio[i : i + 320] for i in range(0, len(audio), 320)), out)
    n = math.ceil(len(audio) / SAMPLES_PER_FRAME)
    info = probe(out)
    assert rep.frames == info.frames == n and info.fps == 25
    assert info.audio_duration == pytest.approx(len(audio) / 16000, abs=0.07)
    pipe.generate_to_file(_face(), audio, tmp_path / "offline.mp4", seed=0, progress=False)
    decoded, offline = read_video(out), read_video(tmp_path / "offline.mp4")
    # the same frames, each file with its own H.264 coding error (these are noise-like frames
    # of a random model; chroma subsampling alone costs ~29 levels against the raw frames)
    assert decoded.shape == offline.shape
    assert np.abs(decoded.astype(int) - offline.astype(int)).mean() < 8
    assert rep.first_frame_s > 0 and rep.underruns >= 0 and rep.rtf > 0


def test_live_cli_from_a_file_and_from_stdin(model_dir, tmp_path, monkeypatch, capsys):
    audio = _speech(20 * SAMPLES_PER_FRAME, seed=2)
    save_wav(tmp_path / "s.wav", audio)
    face = tmp_path / "face.png"
    from readtalk.media import write_image

    write_image(face, _face())
    args = ["live", "--image", str(face), "--model", str(model_dir)]
    assert main([*args, "--audio", str(tmp_path / "s.wav"), "--out", str(tmp_path / "a.mp4")]) == 0
    assert "first frame" in capsys.readouterr().out
    assert probe(tmp_path / "a.mp4").frames == 20

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()

    class Stdin:
        buffer = io.BytesIO(pcm)

    monkeypatch.setattr("sys.stdin", Stdin())
    assert main([*args, "--audio", "-", "--out", str(tmp_path / "b.mp4")]) == 0
    assert probe(tmp_path / "b.mp4").frames == 20
    assert len(load_audio(tmp_path / "b.mp4")) == pytest.approx(len(audio), abs=1200)


def test_bench_stream_reports_latency_and_writes_json(model_dir, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["bench", "stream", "--model", str(model_dir), "--seconds", "2", "--json",
                 str(out), "--chunk-ms", "20"]) == 0  # fmt: skip
    rep = json.loads(out.read_text())
    for key in ("first_frame_s", "rtf", "lateness_p50_s", "lateness_p95_s", "lateness_max_s",
                "underruns", "rss_start_mb", "rss_end_mb"):  # fmt: skip
        assert key in rep
    assert rep["frames"] == 50 and rep["first_frame_s"] > 0 and rep["lateness_max_s"] >= 0
    got = capsys.readouterr()
    assert "first frame" in got.out and "50/50" in got.err  # the progress bar, frames out
    assert main(["bench", "stream", "--model", str(model_dir), "--seconds", "1", "--quiet"]) == 0
    assert "stream" not in capsys.readouterr().err
    pipe = Pipeline.from_pretrained(model_dir)
    paced = bench_stream(pipe, _face(), _speech(8000), chunk_ms=40, paced=True)
    assert paced.paced and paced.frames == 13 and paced.rtf >= 0.45  # 0.5 s of speech, paced
    # the machine's own stalls were watched by a second process over the run
    assert paced.host_stall_max_s is not None and paced.host_stall_max_s >= 0
    assert paced.host_stalls >= 0 and paced.host_stall_s >= paced.host_stall_max_s
    assert main(["bench", "stream", "--model", str(model_dir), "--chunk-ms", "0"]) == 2


def test_a_playback_buffer_moves_the_start_and_absorbs_late_frames():
    # frames 0-8 ready at 0.5 s, frames 9-16 at 0.9 s: 0.5 + 9 / 25 = 0.86 s was their due time
    ready = [0.5] * 9 + [0.9] * 8
    bare = frame_timing(ready)
    assert bare["first_frame_s"] == bare["start_s"] == 0.5 and bare["underruns"] == 1
    assert bare["lateness_max_s"] == pytest.approx(0.04)
    held = frame_timing(ready, 0.05)
    assert held["start_s"] == pytest.approx(0.55) and held["underruns"] == 0
    assert held["first_frame_s"] == 0.5 and held["lateness_max_s"] == pytest.approx(-0.01)
    assert bare["first_underrun_s"] == 0.9 and held["first_underrun_s"] is None
    with pytest.raises(ReadtalkError, match="buffer"):
        bench_stream(None, None, None, buffer_s=-1)


def test_host_watch_sees_a_stopped_machine():
    """A stall of the whole machine shows in the watcher: here its process is stopped (SIGSTOP)
    for 0.4 s, as a memory-reclaim pause or a hypervisor would stop it."""
    import signal
    import time

    from readtalk.profiling import HostWatch

    with HostWatch() as watch:
        time.sleep(0.5)  # the watcher starts sleeping in its 10-ms loop
        watch._proc.send_signal(signal.SIGSTOP)
        time.sleep(0.4)
        watch._proc.send_signal(signal.SIGCONT)
        time.sleep(0.2)
    rep = watch.report()
    assert 0.3 <= rep["host_stall_max_s"] <= 1.0 and rep["host_stalls"] >= 1
    assert 0.4 <= rep["host_stall_at_s"] <= 0.9  # when the stop began, from the block's start
    assert set(rep) >= {"cpu_steal_s", "memory_full_s", "io_full_s"}


def test_speech_for_has_speech_and_pauses():
    x = speech_for(6.0, seed=1)
    assert len(x) == 6 * 16000 and x.dtype == np.float32
    frame_energy = np.sqrt((x[: len(x) // 640 * 640].reshape(-1, 640) ** 2).mean(1))
    assert (frame_energy < 1e-3).mean() > 0.05 and (frame_energy > 0.01).mean() > 0.3


def test_demo_model_in_a_pause_is_still_alive_and_closed(tmp_path):
    """Silence pushed in: the shipped model's mouth stays closed (the SynthTalk reader) and the
    face keeps its identity without freezing (frames still change)."""
    from readtalk.data.synthtalk.mouth_reader import read_mouth
    from readtalk.demo import synth_inputs
    from readtalk.eval.lipsync import thumbnail_identity
    from readtalk.media import read_image

    pipe = Pipeline.from_pretrained()  # the shipped demo model
    made = synth_inputs(tmp_path, pipe.size, seed=2)
    s = pipe.stream(made["image"], seed=0)
    frames = []
    for _ in range(4 * 25):  # 4 s of silence, 40 ms at a time
        frames += s.push(np.zeros(SAMPLES_PER_FRAME, np.float32))
    frames += s.flush()
    video = np.stack(frames)
    assert len(video) == 100
    gap = np.array([read_mouth(f).gap for f in video])  # lip gap / frame (speech: 0.025 median)
    assert (gap < 0.01).mean() > 0.9, gap.round(3)
    ident = thumbnail_identity(video, read_image(made["image"]))
    # no drift: the identity of the second second and of the fourth agree (over 20 s of
    # silence it stays at 0.75-0.80 per 2-s window, against 0.84 while speaking)
    assert ident.mean() > 0.7 and abs(ident[75:].mean() - ident[25:50].mean()) < 0.06
    change = np.abs(np.diff(video.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert (change > 0).mean() > 0.5  # not a frozen picture
