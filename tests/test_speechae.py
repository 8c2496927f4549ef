import json

import pytest
import torch

from readtalk.cli import main
from readtalk.config import load_config
from readtalk.errors import ReadtalkError
from readtalk.speech.speechae import (
    SPEECHAE_SIZES,
    SpeechAE,
    SpeechAEConfig,
    load_speechae,
    num_codes,
    speechae_losses,
)
from readtalk.train.speech import SpeechRunConfig, train_speech


@pytest.mark.parametrize("frames, codes", [(1, 1), (9, 2), (49, 7), (121, 16)])
def test_codes_follow_the_vae_frame_rule(frames, codes):
    model = SpeechAE(SPEECHAE_SIZES["debug"])
    c, r = model(torch.randn(2, frames, 768))
    assert c.shape == (2, codes, 8) and r.shape == (2, frames, 768)
    assert num_codes(frames) == codes


@pytest.mark.parametrize("frames", [8, 10, 120])
def test_frames_not_8k_plus_1_are_a_clear_error(frames):
    with pytest.raises(ReadtalkError, match=r"8k\+1"):
        SpeechAE(SPEECHAE_SIZES["debug"]).encode(torch.randn(1, frames, 768))


def test_encoder_is_causal():
    """Codes of frames <= i do not change when the features after frame i change; the code
    that first sees a changed frame does change (so the test can fail)."""
    torch.manual_seed(0)
    model = SpeechAE(SPEECHAE_SIZES["debug"]).eval()
    x = torch.randn(1, 49, 768)
    base = model.encode(x)
    for i in (0, 7, 8, 20, 40):
        y = x.clone()
        y[:, i + 1 :] = torch.randn_like(y[:, i + 1 :])
        codes = model.encode(y)
        seen = i // 8 + 1  # code j sees frames <= 8j
        assert torch.equal(codes[:, :seen], base[:, :seen])
        assert not torch.allclose(codes[:, seen:], base[:, seen:])


def test_losses_fall_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = SpeechAE(SPEECHAE_SIZES["debug"])
    x = torch.randn(2, 17, 768)
    model.set_stats(x.reshape(-1, 768))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        losses = speechae_losses(model, x)
        loss = losses["mse"] + 0.1 * losses["nce"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first


def _cfg(data, **train):
    return load_config(
        SpeechRunConfig,
        overrides=[
            f"data={data}",
            "front_end=logmel",
            "size=debug",
            "clip_frames=17",
            "train.batch_size=4",
            "train.warmup=5",
            "train.log_every=5",
            "train.eval_every=10",
            "train.ckpt_every=10",
            *[f"train.{k}={v}" for k, v in train.items()],
        ],
    )


def _losses(run):
    return [
        r["loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]


def test_training_resume_is_exact_and_release_round_trips(synth_dataset, tmp_path):
    full = tmp_path / "full"
    train_speech(_cfg(synth_dataset, steps=20), full, progress=False)
    half = tmp_path / "half"
    assert train_speech(_cfg(synth_dataset, steps=20), half, progress=False, stop_at=10) is None
    assert not (half / "speechae.safetensors").exists()
    # continue the interrupted run: same losses as the uninterrupted run
    train_speech(_cfg(synth_dataset, steps=20), half, resume=True, progress=False)
    assert _losses(full) == _losses(half) and len(_losses(full)) == 4
    a, b = load_speechae(full), load_speechae(half)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    metrics = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("test_retrieval" in m for m in metrics)
    assert a.cfg.front_end == "logmel" and a.cfg.feat_dim == 160
    assert len(list((full / "checkpoints").iterdir())) == 2


def test_run_folder_and_config_errors(synth_dataset, tmp_path):
    train_speech(_cfg(synth_dataset, steps=5), tmp_path / "r", progress=False)
    with pytest.raises(ReadtalkError, match="--resume"):
        train_speech(_cfg(synth_dataset, steps=5), tmp_path / "r", progress=False)
    with pytest.raises(ReadtalkError, match=r"unknown config key train\.lrr"):
        load_config(SpeechRunConfig, overrides=["train.lrr=1"])
    with pytest.raises(ReadtalkError, match="clip_frames"):
        _cfg(synth_dataset, steps=5).__class__(data="x", clip_frames=20).validate()
    with pytest.raises(ReadtalkError, match=r"not a safetensors|not found"):
        load_speechae(tmp_path / "nothing.safetensors")


def _cli_train(data, out, steps: int) -> list[str]:
    sets = ["size=debug", "clip_frames=17", "train.batch_size=2"]
    return [
        "train",
        "speech",
        "--data",
        str(data),
        "--out",
        str(out),
        "--front-end",
        "logmel",
        "--steps",
        str(steps),
        "--quiet",
        *[x for kv in sets for x in ("--set", kv)],
    ]


def test_cli_train_and_eval_speech(synth_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(_cli_train(synth_dataset, out, 6)) == 0
    assert main([*_cli_train(synth_dataset, tmp_path / "bad", 6), "--set", "train.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    evaluate = ["eval-speech", "--weights", str(out), "--data", str(synth_dataset), "--quiet"]
    assert main(evaluate) == 0
    assert "frame retrieval" in capsys.readouterr().out


def test_cli_resume_uses_the_runs_config(synth_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli_train(synth_dataset, out, 4)) == 0
    # no --data, a --set and a longer schedule: the rest comes from the run's config.yaml
    assert (
        main(
            [
                "train",
                "speech",
                "--out",
                str(out),
                "--resume",
                "--steps",
                "6",
                "--set",
                "train.threads=1",
                "--quiet",
            ]
        )
        == 0
    )
    saved = (out / "config.yaml").read_text()
    assert "steps: 6" in saved and "size: debug" in saved and "clip_frames: 17" in saved
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 6


# ------------------------------------------------------------------ READ's SpeechAE ablations


def test_raw_speechae_stacks_the_standardised_features_of_each_latent_frame():
    feat = 6
    cfg = SpeechAEConfig(feat_dim=feat, code_dim=8 * feat, kind="raw")
    model = SpeechAE(cfg)
    assert sum(p.numel() for p in model.parameters()) == 0
    model.feat_mean.fill_(1.0)
    model.feat_std.fill_(2.0)
    x = torch.randn(2, 17, feat)
    codes = model.encode(x)
    z = (x - 1.0) / 2.0
    assert codes.shape == (2, 3, 8 * feat)
    assert torch.equal(codes[:, 0], z[:, :1].repeat(1, 8, 1).flatten(1))  # frame 0 alone
    assert torch.equal(codes[:, 1], z[:, 1:9].flatten(1))  # frames 1 .. 8
    assert torch.equal(codes[:, 2], z[:, 9:17].flatten(1))
    with pytest.raises(ReadtalkError, match="no decoder"):
        model.decode(codes)
    with pytest.raises(ReadtalkError, match="code_dim"):
        SpeechAE(SpeechAEConfig(feat_dim=feat, code_dim=8, kind="raw"))
    with pytest.raises(ReadtalkError, match="unknown SpeechAE kind"):
        SpeechAE(SpeechAEConfig(kind="vq"))


@pytest.mark.parametrize("mode", ["random", "raw"])
def test_ablation_modes_write_an_untrained_speechae(synth_dataset, tmp_path, mode, capsys):
    """--mode random is exactly the initialisation pre-training starts from; --mode raw is the
    network-free stand-in; both carry the data's feature statistics and load like any
    SpeechAE (window_codes included: a raw one has no parameters to find a device from)."""
    import numpy as np

    from readtalk.speech.frontend import load_front_end
    from readtalk.speech.speechae import window_codes

    out = tmp_path / mode
    assert main([*_cli_train(synth_dataset, out, 6), "--mode", mode]) == 0
    assert "wrote" in capsys.readouterr().out
    model = load_speechae(out)
    assert not (out / "checkpoints").exists()  # no training steps
    assert float(model.feat_std.mean()) != 1.0  # statistics from the data
    if mode == "random":
        torch.manual_seed(0)  # train.seed
        fresh = SpeechAE(model.cfg)
        for k, v in fresh.state_dict().items():
            if not k.startswith("feat_"):
                assert torch.equal(v, model.state_dict()[k]), k
        assert model.cfg.kind == "ae"
    else:
        assert model.cfg.kind == "raw" and model.cfg.code_dim == 8 * model.cfg.feat_dim
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    codes = window_codes(model, load_front_end("logmel"), audio, 0, 17)
    assert codes.shape == (1, 3, model.cfg.code_dim) and torch.isfinite(codes).all()
    with pytest.raises(ReadtalkError, match="mode must be one of"):
        _cfg(synth_dataset, steps=5).__class__(data="x", mode="none").validate()


def test_statistics_from_a_subset_of_clips(synth_dataset, tmp_path):
    """stats_clips: an untrained (raw) SpeechAE's statistics from that many training clips,
    spread over the split, and no test features (nothing is evaluated)."""
    out = tmp_path / "raw1"
    args = [*_cli_train(synth_dataset, out, 6), "--mode", "raw", "--set", "stats_clips=1"]
    assert main(args) == 0
    feats = torch.load(next(out.glob("features-*.pt")), weights_only=False)
    assert len(feats["train"]) == 1 and feats["test"] == {}
    with pytest.raises(ReadtalkError, match="stats_clips"):
        _cfg(synth_dataset, steps=5).__class__(data="x", stats_clips=-1).validate()
