"""End-to-end inference (readtalk.pipeline) and the speed bench, on tiny random debug models."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

import numpy as np
import pytest
import torch

from readtalk.cli.generate import cmd_generate
from readtalk.cli.generate import register as add_generate_cli
from readtalk.dit import A2VDiT
from readtalk.dit.model import DIT_SIZES
from readtalk.dit.release import save_dit_release
from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLES_PER_FRAME, frames_for_samples, probe, save_wav, write_image
from readtalk.pipeline import Pipeline
from readtalk.release import save_release
from readtalk.speech.speechae import SPEECHAE_SIZES, SpeechAE
from readtalk.vae.model import VideoVAE

torch.set_num_threads(1)

SIZE = 64  # 2 x 2 latent grid
CLIP = 17  # 3 latents per clip
STEPS = 2


def _random_dit(seed: int = 0) -> A2VDiT:
    """A debug DiT whose zero-initialised layers (adaLN, final) are random too, so that its
    output depends on every input."""
    torch.manual_seed(seed)
    dit = A2VDiT(DIT_SIZES["debug"])
    with torch.no_grad():
        for p in dit.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.05)
    return dit


def _write_models(root, vae_preset_channels: int | None = None, **diffusion):
    """A debug model folder; ``diffusion``: more entries of the DiT release's settings."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    vae = VideoVAE("debug")
    if vae_preset_channels is not None:
        cfg = dataclasses.replace(vae.config, latent_channels=vae_preset_channels)
        vae = VideoVAE(cfg)
    vae.save(root / "vae.safetensors")
    cfg = dataclasses.replace(SPEECHAE_SIZES["debug"], feat_dim=160, front_end="logmel")
    sae = SpeechAE(cfg)
    save_release(
        root / "speechae.safetensors", sae.state_dict(), "readtalk.speechae", cfg.to_json()
    )
    save_dit_release(
        root / "dit.safetensors",
        _random_dit(),
        latent_mean=[0.1] * 8,
        latent_std=[0.5] * 8,
        diffusion={"steps": STEPS, "shift": 1.0, "motion_latents": 1, "clip_frames": CLIP,
                   "size": SIZE, **diffusion},
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _write_models(tmp_path_factory.mktemp("models") / "m")


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir)


def _face(h=80, w=100):
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w)[None, :]
    img[..., 1] = np.linspace(0, 255, h)[:, None]
    img[..., 2] = rng.integers(0, 255, (h, w))
    return img


def _speech(samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * env * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(samples)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    write_image(d / "face.png", _face())
    short = _speech(5000)  # 8 frames -> 1 clip
    long = _speech(40 * SAMPLES_PER_FRAME + 100, seed=1)  # 41 frames -> 3 clips of 17
    save_wav(d / "short.wav", short)
    save_wav(d / "long.wav", long)
    return d, short, long


def test_frame_rule():
    assert frames_for_samples(640) == 1
    assert frames_for_samples(641) == 2
    assert frames_for_samples(16000) == 25
    with pytest.raises(ReadtalkError, match="too short"):
        frames_for_samples(639)


@pytest.mark.parametrize("which, clips", [("short", 1), ("long", 3)])
def test_generate_to_file(pipe, inputs, tmp_path, which, clips):
    d, short, long = inputs
    audio = short if which == "short" else long
    out = tmp_path / "out.mp4"
    res = pipe.generate_to_file(d / "face.png", d / f"{which}.wav", out, progress=False)
    n = math.ceil(len(audio) / 640)
    assert res.num_frames == n and res.clips == clips
    info = probe(out)
    assert info.frames == n and info.width == info.height == SIZE and info.fps == 25
    assert info.audio_duration == pytest.approx(len(audio) / 16000, abs=0.03)


def test_cli_handler(model_dir, inputs, tmp_path, capsys):
    d, _, long = inputs
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_generate_cli(sub)
    out = tmp_path / "cli.mp4"
    a = parser.parse_args(
        ["generate", "--image", str(d / "face.png"), "--audio", str(d / "long.wav"),
         "--out", str(out), "--model", str(model_dir), "--quiet", "--seed", "3"]
    )  # fmt: skip
    a.func(a)
    assert "wrote" in capsys.readouterr().out
    info = probe(out)
    assert info.frames == math.ceil(len(long) / 640)
    assert info.audio_duration == pytest.approx(len(long) / 16000, abs=0.03)
    # explicit files, plain chunking
    out2 = tmp_path / "cli2.mp4"
    a = parser.parse_args(
        ["generate", "--image", str(d / "face.png"), "--audio", str(d / "short.wav"),
         "--out", str(out2), "--vae", str(model_dir / "vae.safetensors"),
         "--speech", str(model_dir / "speechae.safetensors"),
         "--dit", str(model_dir / "dit.safetensors"), "--quiet", "--no-ans", "--steps", "1"]
    )  # fmt: skip
    cmd_generate(a)
    assert probe(out2).frames == 8


def test_in_memory_deterministic_and_seeds(pipe, inputs):
    _, _, long = inputs
    img = _face()
    a = pipe(img, long, seed=0, progress=False)
    b = pipe(img, long, seed=0, progress=False)
    c = pipe(img, long, seed=1, progress=False)
    assert a.frames.shape == (41, SIZE, SIZE, 3) and a.frames.dtype == np.uint8
    assert a.clips == 3
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    # ANS vs plain chunking: same timeline, other frames after the first clip
    p = pipe(img, long, seed=0, ans=False, progress=False)
    assert p.frames.shape == a.frames.shape
    assert np.array_equal(p.frames[:CLIP], a.frames[:CLIP])
    assert not np.array_equal(p.frames[CLIP:], a.frames[CLIP:])


def test_motion_latents_are_the_previous_clips_frames_encoded_again(pipe, inputs, monkeypatch):
    import torch

    import readtalk.diffusion.ans as ans

    _, _, long = inputs
    img = _face()
    seen = []  # (previous clip's latents, the motion the next clip got)
    real = ans.ans_sample

    def spy(model_fn, noise, schedule, motion=None, **kw):
        out = real(model_fn, noise, schedule, motion=motion, **kw)
        seen.append((motion, out))
        return out

    monkeypatch.setattr(ans, "ans_sample", spy)
    a = pipe(img, long, seed=0, progress=False)
    assert a.settings.motion_from == "frames" and len(seen) == 3
    # clip 2's motion is clip 1's last decoded frame (uint8 here, so up to rounding) encoded
    last = torch.from_numpy(a.frames[CLIP - 1]).permute(2, 0, 1)[None, :, None].float()
    enc = pipe._normalize(pipe.vae.encode(last / 127.5 - 1).float())
    assert seen[1][0].shape == enc.shape
    assert (seen[1][0] - enc).abs().max() < 0.05
    assert not torch.allclose(seen[1][0], seen[0][1][:, :, -1:])  # not clip 1's last latent
    seen.clear()
    b = pipe(img, long, seed=0, motion_from="latents", progress=False)
    assert torch.equal(seen[1][0], seen[0][1][:, :, -1:])
    assert np.array_equal(a.frames[:CLIP], b.frames[:CLIP])
    assert not np.array_equal(a.frames[CLIP:], b.frames[CLIP:])
    with pytest.raises(ReadtalkError, match="motion_from"):
        pipe(img, long, motion_from="pixels", progress=False)


def test_later_clips_decode_after_the_previous_clips_latents(pipe, inputs, monkeypatch):
    """decode_context: a later clip's new latents continue the earlier clips' latent sequence
    in the VAE decoder, so the video is what the one continuous sequence decodes to."""
    import readtalk.diffusion.ans as ans

    _, _, long = inputs
    img = _face()
    clips = []  # the denormalised latents of each clip
    real = ans.ans_sample

    def spy(*args, **kw):
        out = real(*args, **kw)
        clips.append(pipe._denormalize(out.float()))
        return out

    monkeypatch.setattr(ans, "ans_sample", spy)
    reach = pipe.vae.config.decoder_context
    a = pipe(img, long, seed=0, decode_context=reach, progress=False)
    assert a.settings.decode_context == reach and len(clips) == 3
    seq = torch.cat([clips[0]] + [c[:, :, 1:] for c in clips[1:]], dim=2)  # motion latents out
    assert seq.shape[2] <= reach  # the whole sequence is context: exact
    with torch.no_grad():
        whole = pipe.vae.decode(seq)  # (1, 3, 1 + 8 * 6, H, W)
    frames = ((whole[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).numpy()
    assert np.abs(frames[: len(a.frames)] - a.frames).max() <= 1
    # two motion latents: a later clip's first two latents stand for frames already decoded
    clips.clear()
    two = pipe(img, long, seed=0, decode_context=reach, motion_latents=2, progress=False)
    seq = torch.cat([clips[0]] + [c[:, :, 2:] for c in clips[1:]], dim=2)
    with torch.no_grad():
        whole = pipe.vae.decode(seq)
    frames = ((whole[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).numpy()
    assert len(two.frames) == len(a.frames) and len(clips) > 3
    assert np.abs(frames[: len(two.frames)] - two.frames).max() <= 1
    # 0: every clip decoded on its own; the first clip is the same, the later ones are not
    clips.clear()
    b = pipe(img, long, seed=0, decode_context=0, progress=False)
    assert np.array_equal(a.frames[:CLIP], b.frames[:CLIP])
    assert np.abs(a.frames[CLIP:].astype(int) - b.frames[CLIP:]).max() > 2
    # the default (8 latents) is what pipeline.json can change
    assert pipe.settings().decode_context == 8
    with pytest.raises(ReadtalkError, match="decode context"):
        pipe(img, long, decode_context=-1, progress=False)


def test_split_cfg_unit_scales_equal_no_guidance(pipe, inputs):
    _, short, _ = inputs
    img = _face()
    s = pipe(img, short, guidance="split", alpha=1.0, beta=1.0, seed=5, progress=False)
    n = pipe(img, short, guidance="none", seed=5, progress=False)
    diff = np.abs(s.frames.astype(int) - n.frames.astype(int)).max()
    assert diff <= 1  # float rounding of the combination only
    g = pipe(img, short, guidance="split", seed=5, progress=False)  # alpha 2, beta 6
    assert np.abs(g.frames.astype(int) - n.frames.astype(int)).max() > 1


def test_audio_sensitivity(pipe, inputs):
    _, short, _ = inputs
    a = pipe(_face(), short, seed=0, progress=False)
    b = pipe(_face(), np.zeros_like(short), seed=0, progress=False)
    assert not np.array_equal(a.frames, b.frames)


def test_errors(pipe, model_dir, inputs, tmp_path):
    d, short, _ = inputs
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    for image, audio, match in [
        (bad, short, "cannot read image"),
        (tmp_path / "missing.png", short, "not found"),
        (_face(), short[:600], "too short"),
        (_face(), np.zeros(0, np.float32), "too short"),
        (_face(), np.zeros((2, 1000), np.float32), "mono"),
    ]:
        with pytest.raises(ReadtalkError, match=match) as e:
            pipe(image, audio, progress=False)
        assert "\n" not in str(e.value)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(ReadtalkError, match="empty"):
        pipe.generate_to_file(d / "face.png", empty, tmp_path / "x.mp4", progress=False)
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(ReadtalkError, match="lacks"):
        Pipeline.from_pretrained(tmp_path)


def test_mismatched_checkpoints(model_dir, tmp_path):
    other = _write_models(tmp_path / "other", vae_preset_channels=16)
    with pytest.raises(ReadtalkError, match=r"wrong checkpoint.*latent channels") as e:
        Pipeline.from_files(
            vae=other / "vae.safetensors",
            speech=model_dir / "speechae.safetensors",
            dit=model_dir / "dit.safetensors",
        )
    assert "\n" not in str(e.value)
    cfg = dataclasses.replace(SPEECHAE_SIZES["debug"], feat_dim=160, code_dim=4, front_end="logmel")
    save_release(
        tmp_path / "sae4.safetensors", SpeechAE(cfg).state_dict(), "readtalk.speechae",
        cfg.to_json(),
    )  # fmt: skip
    with pytest.raises(ReadtalkError, match=r"wrong checkpoint.*speech codes"):
        Pipeline.from_files(
            vae=model_dir / "vae.safetensors",
            speech=tmp_path / "sae4.safetensors",
            dit=model_dir / "dit.safetensors",
        )
    with pytest.raises(ReadtalkError, match=r"not 'readtalk\.dit'"):
        Pipeline.from_files(
            vae=model_dir / "vae.safetensors",
            speech=model_dir / "speechae.safetensors",
            dit=model_dir / "speechae.safetensors",
        )


def test_bench_speed_smoke(capsys):
    from readtalk.cli.main import build_parser

    parser = build_parser()
    a = parser.parse_args(
        ["bench", "speed", "--size", "debug", "--res", "64", "--steps", "2", "--clip-frames", "17",
         "--front-end", "logmel", "--repeats", "1", "--threads", "1"]
    )  # fmt: skip
    a.func(a)
    out = capsys.readouterr().out
    for word in ("DiT forward", "clip", "VAE decode", "speech", "real-time factor", "FLOPs"):
        assert word in out
    from readtalk.bench import processor_name

    assert f"1 threads, on {processor_name()}" in out  # timings name the machine they ran on
    assert processor_name().endswith(f"({os.cpu_count()} CPUs)")
    a = parser.parse_args(
        ["bench", "speed", "--size", "debug", "--res", "64", "--steps", "1", "--clip-frames", "17",
         "--front-end", "logmel", "--repeats", "1", "--threads", "1", "--factorised"]
    )  # fmt: skip
    a.func(a)
    assert "VAE factorised-debug" in capsys.readouterr().out


def test_bench_flops_and_paper_on_cpu(capsys):
    from readtalk.bench import dit_flops
    from readtalk.cli.bench import cmd_bench_speed, configure_speed_parser

    f = dit_flops(DIT_SIZES["paper"], frames=16, height=8, width=8)
    assert f["total"] > f["attention"] > 0
    p = argparse.ArgumentParser()
    configure_speed_parser(p)
    with pytest.raises(ReadtalkError, match="cuda"):
        cmd_bench_speed(p.parse_args(["--size", "paper", "--device", "cpu"]))
    cmd_bench_speed(p.parse_args(["--size", "paper", "--flops-only"]))
    out = capsys.readouterr().out
    assert "TFLOP per forward" in out and "per clip" in out


def test_features_per_clip_window(pipe, inputs):
    """Front-end features are computed per clip over that clip's own (padded) audio window."""
    from readtalk.diffusion import plan_clips

    _, _, long = inputs
    calls = []
    fe = pipe.front_end

    class Recorder:
        name, dim = fe.name, fe.dim

        def video_features(self, audio, num_frames):
            calls.append((np.array(audio, copy=True), num_frames))
            return fe.video_features(audio, num_frames)

    pipe.models.front_end = Recorder()
    try:
        pipe(_face(), long, progress=False)
    finally:
        pipe.models.front_end = fe
    plan = plan_clips(math.ceil(len(long) / 640), 3, 1, last="pad")
    assert len(calls) == len(plan) == 3
    padded = np.zeros(plan[-1].frame_stop * 640, np.float32)
    padded[: len(long)] = long
    for (seg, n), w in zip(calls, plan, strict=True):
        assert n == CLIP == w.frames and len(seg) == n * 640
        assert np.array_equal(seg, padded[w.frame_start * 640 : w.frame_stop * 640])


def test_face_crop_frames_the_face(pipe, model_dir, inputs, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from readtalk.cli import main
    from readtalk.data.faces import FaceDetector
    from readtalk.pipeline import face_crop

    photo = skimage_data.astronaut()  # a real portrait, face in the upper middle
    assert pipe.prepare_image(photo, crop="face").shape == (SIZE, SIZE, 3)
    faces = FaceDetector(256)(face_crop(photo, 256))
    assert len(faces) == 1 and abs(faces[0].cx - 128) < 20  # the face is centred now
    with pytest.raises(ReadtalkError, match="no face found"):
        pipe.prepare_image(_face(), crop="face")
    with pytest.raises(ReadtalkError, match="crop must be"):
        pipe.prepare_image(_face(), crop="left")
    d, _, _ = inputs
    write_image(tmp_path / "astronaut.png", photo)
    args = ["generate", "--model", str(model_dir), "--image", str(tmp_path / "astronaut.png")]
    assert main([*args, "--audio", str(d / "short.wav"), "--out", str(tmp_path / "o.mp4"),
                 "--crop", "face", "--quiet"]) == 0  # fmt: skip
    with pytest.raises(SystemExit) as bad:  # argparse: usage and exit status 2
        main([*args, "--audio", str(d / "short.wav"), "--out", str(tmp_path / "p.mp4"),
              "--crop", "nose"])  # fmt: skip
    assert bad.value.code == 2
