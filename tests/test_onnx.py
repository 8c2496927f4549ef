"""ONNX export and the onnxruntime path (readtalk.onnx_runtime), on a tiny random model with a
factorised VAE: the exported DiT equals torch's, the frames of a generation are within 2 grey
levels of torch's for the same seed, the CLI exports and generates, bad input is one line."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from readtalk.cli import main
from readtalk.dit import A2VDiT
from readtalk.dit.model import DIT_SIZES
from readtalk.dit.release import save_dit_release
from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLES_PER_FRAME, probe, save_wav, write_image
from readtalk.onnx_runtime import (
    MANIFEST,
    ONNX_FORMAT,
    OnnxDiT,
    OnnxFrameDecoder,
    export_onnx,
    use_onnx,
)
from readtalk.pipeline import Pipeline
from readtalk.release import save_release
from readtalk.speech.speechae import SPEECHAE_SIZES, SpeechAE
from readtalk.vae.config import get_preset
from readtalk.vae.factorised import FactorisedConfig, FactorisedVAE
from readtalk.vae.model import VideoVAE
from test_pipeline import _face, _random_dit, _speech, _write_models

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A model folder: factorised debug VAE (64 px, 2 x 2 latents), debug SpeechAE and DiT."""
    root = tmp_path_factory.mktemp("onnx") / "torch"
    torch.manual_seed(0)
    frame = get_preset("debug")
    vae = FactorisedVAE(FactorisedConfig(frame=frame, channels=frame.latent_channels, width=16))
    vae.save(root / "vae.safetensors")
    cfg = dataclasses.replace(SPEECHAE_SIZES["debug"], feat_dim=160, front_end="logmel")
    save_release(
        root / "speechae.safetensors", SpeechAE(cfg).state_dict(), "readtalk.speechae",
        cfg.to_json(),
    )  # fmt: skip
    save_dit_release(
        root / "dit.safetensors", _random_dit(), latent_mean=[0.1] * 8, latent_std=[0.5] * 8,
        diffusion={"steps": 2, "shift": 1.0, "motion_latents": 1, "clip_frames": 17, "size": 64},
    )  # fmt: skip
    (root / "pipeline.json").write_text('{"steps": 2}\n')
    return root


@pytest.fixture(scope="module")
def onnx_dir(src, tmp_path_factory):
    """``readtalk export --format onnx`` of ``src``."""
    out = tmp_path_factory.mktemp("onnx") / "exported"
    assert main(["export", "--format", "onnx", "--model", str(src), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def pipes(src, onnx_dir):
    return Pipeline.from_pretrained(src), Pipeline.from_pretrained(onnx_dir, runtime="onnx")


def test_folder_and_manifest(src, onnx_dir, pipes):
    m = json.loads((onnx_dir / MANIFEST).read_text())
    assert m["format"] == ONNX_FORMAT and m["opset"] == 18
    assert set(m["versions"]) == {"torch", "onnx", "onnxruntime"}
    assert m["source"] == str(src.resolve()) and m["clip_latents"] == 3 and m["size"] == 64
    assert m["graphs"]["dit"]["inputs"]["x"] == ["B", 8, "f", "h", "w"]
    assert m["graphs"]["frame_decoder"]["inputs"]["z"] == ["n", 8, 1, "h", "w"]
    assert all(g["max_abs_diff"] < 1e-4 for g in m["graphs"].values())
    for name in m["torch_files"]:  # a complete model folder: the torch runtime loads it too
        assert (onnx_dir / name).read_bytes() == (src / name).read_bytes()
    assert Pipeline.from_pretrained(onnx_dir).defaults["steps"] == 2
    assert not list(onnx_dir.parent.glob(".*partial*"))  # written atomically
    _, onnx = pipes
    assert isinstance(onnx.dit, OnnxDiT)
    assert isinstance(onnx.vae.frame.ae.decoder, OnnxFrameDecoder)


@pytest.mark.parametrize(("b", "f"), [(1, 3), (3, 3), (3, 5)])
def test_dit_matches_torch(pipes, b, f):
    """Split-CFG's batch of 3, one-pass sampling's 1, and clips longer than the export's."""
    torch_pipe, onnx_pipe = pipes
    g = torch.Generator().manual_seed(b * 10 + f)
    x = torch.randn(b, 8, f, 2, 2, generator=g)
    t = torch.rand(b, 1 + f, generator=g)
    ref = torch.randn(b, 8, 1, 2, 2, generator=g)
    audio = torch.randn(b, f, 8, generator=g)
    rm, am = torch.arange(b) > 0, torch.arange(b) > 1
    with torch.no_grad():
        want = torch_pipe.dit(x, t, ref, audio, rm, am)
        got = onnx_pipe.dit(x, t, ref, audio, rm, am)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
        both = onnx_pipe.dit(x, t, ref, audio)  # masks default to "keep"
        assert torch.allclose(both, torch_pipe.dit(x, t, ref, audio), atol=1e-5, rtol=1e-4)
        z = torch.randn(b * f, 8, 1, 2, 2, generator=g)
        dec = onnx_pipe.vae.frame.ae.decoder(z)
        assert torch.allclose(dec, torch_pipe.vae.frame.ae.decoder(z), atol=1e-5)


@pytest.mark.filterwarnings("ignore::readtalk.errors.PortraitWarning")
def test_frames_within_two_grey_levels(pipes):
    """A 3-clip generation (motion latents re-encoded, the decoder's context carried over):
    the ONNX path's uint8 frames differ from torch's by at most 2 levels."""
    torch_pipe, onnx_pipe = pipes
    audio = _speech(40 * SAMPLES_PER_FRAME + 100, seed=1)
    a = torch_pipe(_face(), audio, seed=3, progress=False)
    b = onnx_pipe(_face(), audio, seed=3, progress=False)
    assert a.frames.shape == b.frames.shape == (41, 64, 64, 3) and a.clips == 3
    diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
    assert diff.max() <= 2, diff.max()
    assert a.frames.std() > 0


@pytest.mark.filterwarnings("ignore::readtalk.errors.PortraitWarning")
def test_rolling_schedule_within_two_grey_levels(src, tmp_path):
    """The rolling schedule (windows of 2 and 3 latents, one pass a step, per-latent speech
    codes, the motion latents taken as made): the exported graph gives torch's frames too."""
    root = tmp_path / "rolling"
    root.mkdir()
    for name in ("vae.safetensors", "speechae.safetensors", "pipeline.json"):
        (root / name).write_bytes((src / name).read_bytes())
    save_dit_release(
        root / "dit.safetensors", _random_dit(), latent_mean=[0.1] * 8, latent_std=[0.5] * 8,
        diffusion={"steps": 2, "shift": 1.0, "motion_latents": 1, "clip_frames": 17, "size": 64,
                   "schedule": "rolling", "context_latents": 2, "motion_from": "latents",
                   "guidance": "none", "speech_window": {"context": 16, "lookahead": 2}},
    )  # fmt: skip
    export_onnx(root, tmp_path / "onnx")
    a_pipe = Pipeline.from_pretrained(root)
    b_pipe = Pipeline.from_pretrained(tmp_path / "onnx", runtime="onnx")
    audio = _speech(40 * SAMPLES_PER_FRAME + 100, seed=2)
    a = a_pipe(_face(), audio, seed=4, motion_floor=0.3, progress=False)
    b = b_pipe(_face(), audio, seed=4, motion_floor=0.3, progress=False)
    assert a.frames.shape == b.frames.shape == (41, 64, 64, 3) and a.clips == 5
    diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
    assert diff.max() <= 2, diff.max()
    assert a.frames.std() > 0


@pytest.mark.filterwarnings("ignore::readtalk.errors.PortraitWarning")
def test_a_portrait_refiner_runs_in_torch_under_onnx(src, tmp_path):
    """A VAE with a portrait refiner: the refiner stays in torch beside the exported frame
    decoder, and the frames stay within 2 grey levels of torch's."""
    root = tmp_path / "refined"
    root.mkdir()
    for name in ("dit.safetensors", "speechae.safetensors", "pipeline.json"):
        (root / name).write_bytes((src / name).read_bytes())
    from readtalk.train.refiner import with_refiner
    from readtalk.vae.factorised import load_vae

    vae = with_refiner(load_vae(src / "vae.safetensors"), 4, 8)
    with torch.no_grad():
        vae.refiner.head.bias[3] = 0.0  # half the portrait itself: visibly used
    vae.save(root / "vae.safetensors")
    export_onnx(root, tmp_path / "onnx")
    a_pipe = Pipeline.from_pretrained(root)
    b_pipe = Pipeline.from_pretrained(tmp_path / "onnx", runtime="onnx")
    plain = Pipeline.from_pretrained(src)
    audio = _speech(20 * SAMPLES_PER_FRAME, seed=2)
    a, b = (p(_face(), audio, seed=4, progress=False).frames for p in (a_pipe, b_pipe))
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert a.shape == (20, 64, 64, 3) and diff.max() <= 2, diff.max()
    base = plain(_face(), audio, seed=4, progress=False).frames
    assert np.abs(a.astype(np.int16) - base.astype(np.int16)).mean() > 1  # the refiner ran


def test_video_vae_and_audio_window(tmp_path):
    """A model folder with a (non-factorised) video VAE exports its DiT only (the decoder
    stays torch); a DiT whose frames attend to neighbouring speech codes (``audio_window``)
    keeps its window index and mask dynamic in the graph."""
    root = _write_models(tmp_path / "torch")
    torch.manual_seed(2)
    dit = A2VDiT(dataclasses.replace(DIT_SIZES["debug"], audio_window=1))
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_dit_release(root / "dit.safetensors", dit, diffusion={"clip_frames": 17, "size": 64})
    m = export_onnx(root, tmp_path / "onnx")
    assert set(m["graphs"]) == {"dit"} and m["graphs"]["dit"]["max_abs_diff"] < 1e-4
    pipe = Pipeline.from_pretrained(tmp_path / "onnx", runtime="onnx")
    assert isinstance(pipe.dit, OnnxDiT) and isinstance(pipe.vae, VideoVAE)
    g = torch.Generator().manual_seed(0)
    for f in (2, 6):
        args = (torch.randn(3, 8, f, 2, 2, generator=g), torch.rand(3, 1 + f, generator=g),
                torch.randn(3, 8, 1, 2, 2, generator=g), torch.randn(3, f, 8, generator=g),
                torch.tensor([False, True, True]), torch.tensor([False, False, True]))  # fmt: skip
        with torch.no_grad():
            assert torch.allclose(pipe.dit(*args), dit(*args), atol=1e-5, rtol=1e-4)


def test_cli_generate_onnx(onnx_dir, tmp_path, capsys):
    write_image(tmp_path / "face.png", _face())
    save_wav(tmp_path / "speech.wav", _speech(5000))
    out = tmp_path / "out.mp4"
    args = ["generate", "--image", str(tmp_path / "face.png"), "--audio",
            str(tmp_path / "speech.wav"), "--out", str(out), "--quiet"]  # fmt: skip
    assert main([*args, "--runtime", "onnx", "--model", str(onnx_dir)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert probe(out).frames == 8
    # --runtime onnx needs an exported folder
    assert main([*args, "--runtime", "onnx"]) == 2
    assert "--runtime onnx needs --model DIR" in capsys.readouterr().err
    assert main([*args, "--runtime", "onnx", "--model", str(onnx_dir.parent)]) == 2


def test_errors(src, onnx_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(ReadtalkError, match="not an ONNX model folder"):
        Pipeline.from_pretrained(src, runtime="onnx")
    with pytest.raises(ReadtalkError, match="runtime must be one of"):
        Pipeline.from_pretrained(onnx_dir, runtime="tensorrt")
    with pytest.raises(ReadtalkError, match="CPU in float32"):
        Pipeline.from_pretrained(onnx_dir, runtime="onnx", dtype="bfloat16")
    with pytest.raises(ReadtalkError, match="model folder not found"):
        export_onnx(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ReadtalkError, match="source model folder"):
        export_onnx(src, src)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(ReadtalkError, match="not an earlier ONNX export"):
        export_onnx(src, tmp_path / "busy")
    # the optional extra missing: one line saying how to install it
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ReadtalkError, match=r"pip install 'readtalk\[onnx\]'"):
        Pipeline.from_pretrained(onnx_dir, runtime="onnx")
    with pytest.raises(ReadtalkError, match=r"pip install 'readtalk\[onnx\]'"):
        export_onnx(src, tmp_path / "o")
    monkeypatch.undo()
    # a DiT call the graph cannot take
    models = Pipeline.from_pretrained(onnx_dir, runtime="onnx").models
    with pytest.raises(ReadtalkError, match=r"t must be \(1, 4\)"):
        models.dit(torch.zeros(1, 8, 3, 2, 2), torch.zeros(1, 3), torch.zeros(1, 8, 1, 2, 2),
                   torch.zeros(1, 3, 8))  # fmt: skip
    with pytest.raises(ReadtalkError, match="single frames"):
        models.vae.frame.ae.decoder(torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(ReadtalkError, match="not an ONNX model folder"):
        use_onnx(models, src)
    # CLI: the two export formats take their own options
    assert main(["export", "--format", "onnx", "--vae", "v", "--out", str(tmp_path / "x")]) == 2
    assert "--vae: options of the safetensors export" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "x")]) == 2
    assert "needs --vae, --speech, --dit" in capsys.readouterr().err
    assert main(["export", "--model", str(src), "--vae", "a", "--speech", "b", "--dit", "c",
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip


@pytest.mark.filterwarnings("ignore::readtalk.errors.PortraitWarning")
def test_bench_profile_compares_the_runtimes(onnx_dir, tmp_path):
    """``bench speed --profile --runtime onnx``: torch and onnx on the same speech in one run;
    the ONNX run's FLOPs are the torch model's (onnxruntime cannot be counted)."""
    from readtalk.bench_profile import profile_runs

    write_image(tmp_path / "face.png", _face())
    save_wav(tmp_path / "s.wav", _speech(20 * SAMPLES_PER_FRAME))
    rep = profile_runs(
        str(onnx_dir), runtime="onnx", audio=str(tmp_path / "s.wav"),
        image=str(tmp_path / "face.png"), progress=False,
    )  # fmt: skip
    torch_run, onnx_run = rep["runs"]
    assert (torch_run["runtime"], onnx_run["runtime"]) == ("torch", "onnx")
    assert onnx_run["frames"] == torch_run["frames"] == 20
    assert onnx_run["unit_gflop"] == torch_run["unit_gflop"]
    dit = next(s for s in onnx_run["stages"] if s["stage"] == "dit")
    assert dit["gflop"] > 0
    assert "onnx / torch generation time" in rep["text"]
