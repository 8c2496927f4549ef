"""The speed work of "Speed to the limit": the stage accounting of ``bench speed --profile``,
and the exact shortcuts generation takes (Whisper's last block on the kept rows only, the
frame path's cached kernels)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from readtalk.bench_profile import STAGES, process_age, profile_generation, profile_table
from readtalk.cli.main import build_parser
from readtalk.pipeline import Pipeline
from readtalk.profiling import StageTimes, matmul_peak
from readtalk.speech.frontend import WhisperFrontEnd
from readtalk.speech.whisper import WhisperConfig, WhisperEncoder
from readtalk.vae.frameconv import FrameCausalConv3d
from readtalk.vae.model import VideoVAE
from test_pipeline import _face, _speech, _write_models

torch.set_num_threads(1)


def test_stage_times_accumulate():
    times = StageTimes()
    with times.stage("a"):
        time.sleep(0.01)
    with times.stage("a"):
        pass
    times.add("b", 0.5, calls=0)
    assert times.names() == ["a", "b"]
    assert times.calls("a") == 2 and times.seconds("a") >= 0.01
    assert times.as_dict()["b"] == {"seconds": 0.5, "calls": 0}
    with pytest.raises(ValueError), times.stage("c"):
        raise ValueError("the stage still counts")
    assert times.calls("c") == 1


def test_matmul_peak_is_bounded_in_time():
    t0 = time.perf_counter()
    fp32 = matmul_peak(torch.float32, budget_s=0.2, max_n=256)
    bf16 = matmul_peak(torch.bfloat16, budget_s=0.2, max_n=256)
    assert time.perf_counter() - t0 < 10
    assert fp32["gflops"] > 0 and bf16["gflops"] > 0
    assert fp32["dtype"] == "float32" and bf16["dtype"] == "bfloat16"
    assert process_age() is None or process_age() > 0


def _whisper() -> WhisperEncoder:
    torch.manual_seed(0)
    return WhisperEncoder(WhisperConfig(n_ctx=64, d_model=32, n_heads=2, n_layers=3, ffn_dim=64))


def test_whisper_rows_are_exactly_the_full_output_cut():
    enc = _whisper().eval()
    mel = torch.randn(2, 80, 128)
    with torch.no_grad():
        full = enc(mel)
        for rows in (1, 17, 64):
            assert torch.allclose(enc(mel, rows), full[:, :rows], atol=1e-5)  # rounding only
        with pytest.raises(ValueError, match="rows"):
            enc(mel, 65)


def test_front_end_short_clip_takes_the_row_path_and_matches():
    fe = WhisperFrontEnd(_whisper())
    audio = _speech(16000 // 4)  # 0.25 s: 13 of the 64 positions
    calls = []
    forward = fe.encoder.forward
    fe.encoder.forward = lambda mel, rows=None: calls.append(rows) or forward(mel, rows)
    feats = fe.features(audio)
    assert calls == [13]
    fe.encoder.forward = forward
    # the same audio through the full window, cut afterwards
    full = WhisperFrontEnd(_whisper())
    full.encoder.forward = lambda mel, rows=None: forward(mel)
    assert torch.allclose(full.features(audio), feats, atol=1e-6)


def test_frame_path_kernel_cache_follows_the_weights():
    vae = VideoVAE("debug").eval()
    conv = next(m for m in vae.modules() if isinstance(m, FrameCausalConv3d))
    x = torch.randn(1, conv.conv.in_channels, 1, 8, 8)
    with torch.no_grad():
        a = conv(x)
        assert torch.equal(conv(x), a)  # the cached kernel gives the same output
        conv.conv.weight.mul_(2.0)  # an in-place change (an optimiser step) is seen
        b = conv(x)
    bias = conv.conv.bias[None, :, None, None, None]
    assert torch.allclose(b - bias, 2 * (a - bias), atol=1e-5)
    # with gradients, the kernel is summed in the graph: each tap gets the gradient
    conv.conv.weight.grad = None
    conv(x).sum().backward()
    g = conv.conv.weight.grad
    assert g is not None and torch.allclose(g[:, :, 0], g[:, :, 1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _write_models(tmp_path_factory.mktemp("models") / "m")


@pytest.mark.filterwarnings("ignore::readtalk.errors.PortraitWarning")
def test_profile_accounts_for_the_generation(model_dir):
    pipe = Pipeline.from_pretrained(model_dir)
    speech = _speech(40 * 640 + 100, seed=1)  # 41 frames: 3 clips of 17
    r = profile_generation(
        pipe, speech, _face(), startup_seconds=1.5, peak_budget_s=0.1, progress=False
    )
    stages = {s["stage"]: s for s in r["stages"]}
    assert set(stages) <= set(STAGES) and {"speech", "dit", "decode", "mp4"} <= set(stages)
    assert r["frames"] == 41 and r["clips"] == 3
    assert stages["speech"]["calls"] == 3 and stages["dit"]["calls"] == 3
    # every DiT step is one call of the guidance batch: its FLOPs scale with the steps
    assert stages["dit"]["gflop"] == pytest.approx(r["unit_gflop"]["dit"] * 3 * r["steps"])
    assert stages["dit"]["gflop"] > 0 and stages["mp4"]["gflop"] == 0
    accounted = sum(s["seconds"] for s in r["stages"]) + r["other_seconds"]
    assert accounted == pytest.approx(r["generation_seconds"])
    assert r["rtf_end_to_end"] == pytest.approx(
        (1.5 + r["generation_seconds"]) / r["audio_seconds"]
    )
    assert r["rtf_floor_fp32"] == pytest.approx(
        r["total_gflop"] / r["peak_gflops"]["fp32"] / r["audio_seconds"]
    )
    text = profile_table(r)
    for word in ("speech", "dit", "decode", "mp4", "% fp32", "% bf16", "per guidance pass"):
        assert word in text


@pytest.mark.filterwarnings("ignore::readtalk.errors.PortraitWarning")
def test_profile_cli_writes_json(model_dir, tmp_path, capsys):
    from readtalk.media import save_wav, write_image

    write_image(tmp_path / "face.png", _face())
    save_wav(tmp_path / "s.wav", _speech(20 * 640))
    a = build_parser().parse_args([
        "bench", "speed", "--profile", "--model", str(model_dir), "--audio",
        str(tmp_path / "s.wav"), "--image", str(tmp_path / "face.png"), "--threads", "1",
        "--json", str(tmp_path / "p.json"), "--quiet",
    ])  # fmt: skip
    a.func(a)
    out = capsys.readouterr().out
    assert "real-time factor" in out and "the floor" in out
    runs = json.loads((tmp_path / "p.json").read_text())
    assert runs[0]["runtime"] == "torch" and runs[0]["frames"] == 20


def test_dtype_auto_picks_bf16_only_where_it_is_fast():
    from readtalk.device import fast_bf16, resolve_dtype

    want = torch.bfloat16 if fast_bf16("cpu") else torch.float32
    assert resolve_dtype("auto", "cpu") == want
    assert resolve_dtype("float32", "cpu") == torch.float32


def test_a_rolling_model_counts_one_latents_short_speech_window():
    """The shipped model's speech codes come per latent from a 2-s window, not a clip's 30-s
    Whisper window: its "speech" stage FLOPs are that window's (a tenth of the clip's or less)."""
    import numpy as np

    from readtalk.bench_profile import count_flops, stage_flops
    from readtalk.speech.speechae import window_codes

    pipe = Pipeline.from_pretrained()
    st, md = pipe.settings(), pipe.models
    assert md.speech_window is not None
    speech = np.zeros(st.clip_frames * 640, np.float32)
    clip = count_flops(lambda: window_codes(md.speechae, md.front_end, speech, 0, st.clip_frames))
    per_latent = stage_flops(pipe, st)["speech"]
    assert 0 < per_latent < 0.1 * clip
