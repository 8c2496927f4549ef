"""``readtalk cache`` and ``readtalk train dit`` on tiny untrained models (CPU, seconds).

The golden losses (tests/golden/dit_losses.json) come from a synthetic cache built here from a
fixed torch seed, so they depend only on the DiT, the diffusion code and the training loop, not
on the VAE or the SynthTalk generator. Regenerate them after an intended change with

    READTALK_REGEN_GOLDEN=1 python -m pytest -q tests/test_cache_dit.py -k golden
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from readtalk.data.cache import FORMAT, SHARD, CacheConfig, CachedLatents, build_cache
from readtalk.errors import ReadtalkError
from readtalk.media import read_image
from readtalk.release import atomic_save, save_release
from readtalk.speech.speechae import SPEECHAE_SIZES, SpeechAE
from readtalk.train.dit import (
    DiffusionConfig,
    DiTRunConfig,
    dit_losses,
    eval_loss,
    load_dit,
    train_dit,
)
from readtalk.train.optim import OptimConfig
from readtalk.vae.model import VideoVAE

torch.set_num_threads(1)

GOLDEN = Path(__file__).parent / "golden" / "dit_losses.json"
FRAMES, SIZE = 17, 64


def _weights(root: Path, front_end: str = "logmel") -> tuple[Path, Path]:
    torch.manual_seed(0)
    vae = VideoVAE("debug")
    vae_path = vae.save(root / "vae.safetensors")
    if front_end == "logmel":
        cfg = dataclasses.replace(SPEECHAE_SIZES["debug"], feat_dim=160, front_end="logmel")
    else:
        cfg = dataclasses.replace(SPEECHAE_SIZES["debug"], feat_dim=768, front_end="whisper-tiny")
    speech = SpeechAE(cfg)
    sp_path = save_release(
        root / f"speechae-{front_end}.safetensors",
        speech.state_dict(),
        "readtalk.speechae",
        cfg.to_json(),
    )
    return vae_path, sp_path


def _cfg(data, vae, speech, **kw) -> CacheConfig:
    base = dict(
        data=str(data),
        vae=str(vae),
        speech=str(speech),
        frames=FRAMES,
        size=SIZE,
        front_end="logmel",
        shard_size=4,
    )
    return CacheConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cache(synth_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    vae, speech = _weights(root)
    out = root / "cache"
    build_cache(_cfg(synth_dataset, vae, speech), out, progress=False)
    return {"out": out, "vae": vae, "speech": speech, "root": root, "data": synth_dataset}


# ----------------------------------------------------------------------------------- the cache


def test_cache_shapes_and_meta(cache):
    meta = json.loads((cache["out"] / "meta.json").read_text())
    # 6 clips of 65 frames -> windows at 0, 17, 34 (51 + 17 > 65): 18 windows, 5 shards of <= 4
    assert meta["format"] == FORMAT
    assert meta["windows"]["train"] + meta["windows"]["test"] == 18
    assert meta["skipped_short"] == 0 and len(meta["shards"]) == 5
    assert meta["latent_shape"] == [8, 3, 2, 2]  # debug VAE: 8 channels, 8x time, 32x space
    assert meta["code_dim"] == 8 and meta["front_end"] == "logmel"
    assert len(meta["vae"]["sha256"]) == 64 and meta["speechae"]["path"].endswith(".safetensors")
    shard = torch.load(cache["out"] / SHARD.format(0), weights_only=False)
    assert shard["latent"].dtype == torch.float16 and shard["latent"].shape == (4, 8, 3, 2, 2)
    assert shard["ref"].shape == (4, 8, 1, 2, 2) and shard["audio"].shape == (4, 3, 8)
    assert shard["gap"].shape == (4, FRAMES) and torch.isfinite(shard["gap"]).all()
    assert shard["start"].tolist() == [0, 17, 34, 0]
    assert shard["ids"][:3] == [shard["ids"][0]] * 3

    data = CachedLatents(cache["out"])
    train = CachedLatents(cache["out"], "train")
    assert len(data) == 18 and len(train) == meta["windows"]["train"]
    assert set(train.split) == {"train"}
    z = train.latent.double().transpose(0, 1).reshape(8, -1)
    assert torch.allclose(z.mean(1), torch.tensor(meta["latent_mean"]).double(), atol=1e-5)
    assert torch.allclose(
        z.std(1, correction=0), torch.tensor(meta["latent_std"]).double(), atol=1e-4
    )
    b = train.sample(5, np.random.default_rng(0))
    assert b["latent"].shape == (5, 8, 3, 2, 2) and b["latent"].dtype == torch.float32
    assert b["audio"].shape == (5, 3, 8) and b["ref"].shape == (5, 8, 1, 2, 2)
    nz = train.normalize(train.latent).transpose(0, 1).reshape(8, -1)
    assert torch.allclose(nz.mean(1), torch.zeros(8), atol=1e-3)
    again = train.sample(5, np.random.default_rng(0))
    assert torch.equal(b["latent"], again["latent"])


def test_cache_window_audio_codes(cache):
    """The codes of a window come from that window's own audio."""
    from readtalk.data.manifest import clip_audio_path, load_manifest
    from readtalk.media import load_audio
    from readtalk.speech.frontend import load_front_end
    from readtalk.speech.speechae import load_speechae

    data = CachedLatents(cache["out"])
    rec = next(r for r in load_manifest(cache["data"]) if r["id"] == data.ids[1])
    start = int(data.start[1])
    audio = load_audio(clip_audio_path(rec))[start * 640 : (start + FRAMES) * 640]
    feats = load_front_end("logmel").video_features(audio, FRAMES).reshape(FRAMES, -1)
    with torch.no_grad():
        codes = load_speechae(cache["speech"]).encode(feats[None])[0]
    assert torch.allclose(data.audio[1], codes, atol=1e-5)


def test_cache_resume_and_determinism(cache, tmp_path):
    out = cache["out"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.pt")}
    (out / SHARD.format(4)).unlink()  # as if interrupted before the last shard
    build_cache(_cfg(cache["data"], cache["vae"], cache["speech"]), out, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.pt")}
    assert all(after[n] == mtimes[n] for n in mtimes if n != SHARD.format(4))
    assert SHARD.format(4) in after
    # a second encoding from scratch is identical
    other = tmp_path / "again"
    build_cache(_cfg(cache["data"], cache["vae"], cache["speech"]), other, progress=False)
    for name in mtimes:
        a = torch.load(out / name, weights_only=False)
        b = torch.load(other / name, weights_only=False)
        assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["audio"], b["audio"])
    assert json.loads((out / "meta.json").read_text()) == {
        **json.loads((other / "meta.json").read_text()),
        "settings": json.loads((out / "meta.json").read_text())["settings"],
    }


def test_cache_errors(cache, tmp_path):
    base = (cache["data"], cache["vae"], cache["speech"])
    with pytest.raises(ReadtalkError, match=r"other settings.*frames"):
        build_cache(_cfg(*base, frames=9), cache["out"], progress=False)
    _, whisper_speech = _weights(tmp_path, "whisper")
    with pytest.raises(ReadtalkError, match="trained on 'whisper-tiny' features"):
        build_cache(_cfg(*base[:2], whisper_speech), tmp_path / "c1", progress=False)
    with pytest.raises(ReadtalkError, match="VAE weights not found"):
        build_cache(_cfg(base[0], tmp_path / "nope.safetensors", base[2]), tmp_path / "c2")
    with pytest.raises(ReadtalkError, match="frames must be 8k"):
        build_cache(_cfg(*base, frames=20), tmp_path / "c3")
    with pytest.raises(ReadtalkError, match=r"no clip .* has 73 frames"):  # all too short
        build_cache(_cfg(*base, frames=73), tmp_path / "c4", progress=False)


def test_latents_from_reuses_the_latents_and_recodes_the_speech(cache, tmp_path):
    """A cache for another SpeechAE made --latents-from an old one equals the one made from
    scratch (latents, ground truth and new codes), without loading the VAE."""
    torch.manual_seed(1)
    cfg = dataclasses.replace(SPEECHAE_SIZES["debug"], feat_dim=160, front_end="logmel")
    other = save_release(
        tmp_path / "other.safetensors",
        SpeechAE(cfg).state_dict(),
        "readtalk.speechae",
        cfg.to_json(),
    )
    full = tmp_path / "full"
    build_cache(_cfg(cache["data"], cache["vae"], other), full, progress=False)
    quick = tmp_path / "quick"
    build_cache(
        _cfg(cache["data"], "", other, latents_from=str(cache["out"])), quick, progress=False
    )
    a, b, old = CachedLatents(full), CachedLatents(quick), CachedLatents(cache["out"])
    for key in ("latent", "ref", "audio", "mouth_open", "gap", "start"):
        assert torch.allclose(a.tensors[key], b.tensors[key], atol=1e-6, equal_nan=True), key
    assert a.ids == b.ids and a.meta["latent_mean"] == b.meta["latent_mean"]
    assert not torch.allclose(b.audio, old.audio)  # the codes are the new SpeechAE's
    assert b.meta["vae"] == old.meta["vae"]
    assert b.meta["settings"]["latents_from"] == str(cache["out"].resolve())
    # the old cache must hold the same windows, from the same VAE when one is named
    with pytest.raises(ReadtalkError, match=r"holds other windows \(frames"):
        build_cache(
            _cfg(cache["data"], "", other, frames=9, latents_from=str(cache["out"])),
            tmp_path / "x1",
            progress=False,
        )
    wrong_vae = VideoVAE("debug").save(tmp_path / "vae2.safetensors")
    with pytest.raises(ReadtalkError, match="another VAE"):
        build_cache(
            _cfg(cache["data"], wrong_vae, other, latents_from=str(cache["out"])),
            tmp_path / "x2",
            progress=False,
        )
    with pytest.raises(ReadtalkError, match="not a finished cache"):
        build_cache(
            _cfg(cache["data"], "", other, latents_from=str(tmp_path)),
            tmp_path / "x3",
            progress=False,
        )
    with pytest.raises(ReadtalkError, match="give --vae"):
        build_cache(_cfg(cache["data"], "", other), tmp_path / "x4", progress=False)


# ------------------------------------------------------------------------------------- the DiT


def _run_cfg(cache_dir, steps, **train) -> DiTRunConfig:
    tc = dict(
        steps=steps,
        batch_size=2,
        lr=1e-3,
        warmup=2,
        log_every=1,
        eval_every=1000,
        ckpt_every=3,
        keep_last=2,
        seed=0,
    )
    return DiTRunConfig(
        cache=str(cache_dir), size="debug", ema_decay=0.9, train=OptimConfig(**{**tc, **train})
    )


def _losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def _synthetic_cache(root: Path) -> Path:
    """A cache folder of random tensors (fixed seed): 6 train + 2 test windows."""
    g = torch.Generator().manual_seed(7)
    n, c = 8, 8
    shard = {
        "latent": torch.randn(n, c, 3, 2, 2, generator=g).half(),
        "ref": torch.randn(n, c, 1, 2, 2, generator=g).half(),
        "audio": torch.randn(n, 3, 8, generator=g),
        "mouth_open": torch.zeros(n, FRAMES),
        "gap": torch.zeros(n, FRAMES),
        "start": torch.zeros(n, dtype=torch.long),
        "ids": [f"{i:06d}" for i in range(n)],
        "split": ["train"] * 6 + ["test"] * 2,
    }
    atomic_save(shard, root / SHARD.format(0))
    meta = {
        "format": FORMAT,
        "shards": [SHARD.format(0)],
        "frames": FRAMES,
        "latent_shape": [c, 3, 2, 2],
        "code_dim": 8,
        "latent_mean": [0.1] * c,
        "latent_std": [0.9] * c,
        "vae": {"path": "vae"},
        "speechae": {"path": "sp"},
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_dit_golden_losses(tmp_path):
    cache_dir = _synthetic_cache(tmp_path / "cache")
    train_dit(_run_cfg(cache_dir, 6), tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 6 and all(np.isfinite(losses))
    if os.environ.get("READTALK_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"losses": losses}, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())["losses"]
    np.testing.assert_allclose(losses, golden, rtol=1e-4)


def test_dit_exact_resume_and_release(cache, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    cfg = _run_cfg(cache["out"], 8)
    path = train_dit(cfg, full, progress=False)
    assert train_dit(cfg, part, progress=False, stop_at=5) is None  # checkpoint at step 3
    path2 = train_dit(cfg, part, resume=True, progress=False)
    assert _losses(part) == _losses(full)
    model, info = load_dit(path)
    model2, _ = load_dit(path2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    meta = json.loads((cache["out"] / "meta.json").read_text())
    assert torch.allclose(info["latent_mean"], torch.tensor(meta["latent_mean"]))
    assert info["vae"]["sha256"] == meta["vae"]["sha256"]
    assert info["diffusion"] == DiffusionConfig()
    # the release holds the EMA weights of the checkpoint, and reproduces its outputs
    ckpt = torch.load(sorted((full / "checkpoints").iterdir())[-1], weights_only=False)
    from readtalk.dit import A2VDiT

    ema = A2VDiT(model.cfg)
    ema.load_state_dict(ckpt["ema"])
    ema.eval()
    test = CachedLatents(cache["out"], "test")
    assert eval_loss(model, test, 4) == eval_loss(ema, test, 4)
    assert eval_loss(model, test, 4, audio=False) != eval_loss(model, test, 4)
    metrics = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert "test_ema_loss" in metrics[-1] and "test_loss" in metrics[-1]
    assert math.isfinite(metrics[-1]["test_ema_audio_gain"])


def test_dit_starts_from_a_release(cache, tmp_path):
    """init: a run starts from a DiT release's weights (its first loss is the release's, not a
    random model's); a release of another architecture is a one-line error."""
    first = train_dit(_run_cfg(cache["out"], 6, lr=3e-3), tmp_path / "a", progress=False)
    cfg = dataclasses.replace(_run_cfg(cache["out"], 2, lr=1e-12), init=str(first))
    train_dit(cfg, tmp_path / "b", progress=False)
    fresh = train_dit(_run_cfg(cache["out"], 2, lr=1e-12), tmp_path / "c", progress=False)
    released, _ = load_dit(first)
    started, _ = load_dit(tmp_path / "b")
    for (k, a), b in zip(released.state_dict().items(), started.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)  # lr ~0: still the release
    untouched, _ = load_dit(fresh)
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(
            released.state_dict().values(), untouched.state_dict().values(), strict=True
        )
    )
    assert "initialised from" in (tmp_path / "b/log.txt").read_text()
    bigger = dataclasses.replace(cfg, size="tiny")
    with pytest.raises(ReadtalkError, match="differs from this run"):
        train_dit(bigger, tmp_path / "d", progress=False)


def test_dit_overfits_one_batch(cache):
    from readtalk.dit import A2VDiT

    torch.manual_seed(0)
    data = CachedLatents(cache["out"], "train")
    cfg = _run_cfg(cache["out"], 1).model_config(data.meta)
    model = A2VDiT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    batch = data.get([0, 1])
    d = DiffusionConfig(p_drop_audio=0.0, p_drop_both=0.0)
    losses = []
    for step in range(150):  # fresh timesteps and noise every step, same two windows
        loss = dit_losses(model, batch, d, torch.Generator().manual_seed(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)


def test_a_run_with_the_mouth_loss_logs_it_and_resumes_exactly(cache, tmp_path):
    cfg = _run_cfg(cache["out"], 6)
    cfg = dataclasses.replace(cfg, diffusion=DiffusionConfig(mouth_weight=1.0))
    train_dit(cfg, tmp_path / "full", progress=False)
    assert train_dit(cfg, tmp_path / "part", progress=False, stop_at=4) is None
    train_dit(cfg, tmp_path / "part", resume=True, progress=False)
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    rows = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    mouth = [r["mouth"] for r in rows if "mouth" in r]
    assert len(mouth) == 6 and all(np.isfinite(mouth))
    assert "mouth loss: weight 1.0" in (tmp_path / "full/log.txt").read_text()
    assert math.isfinite(rows[-1]["test_ema_mouth"])


def test_train_dit_cli(cache, tmp_path, capsys):
    from readtalk.cli.main import build_parser
    from readtalk.cli.train import cmd_train_dit

    a = build_parser().parse_args(
        [
            "train",
            "dit",
            "--cache",
            str(cache["out"]),
            "--out",
            str(tmp_path / "r"),
            "--size",
            "debug",
            "--steps",
            "2",
            "--quiet",
            "--set",
            "train.batch_size=2",
        ]
    )
    cmd_train_dit(a)
    assert (tmp_path / "r" / "dit.safetensors").is_file()
    assert "wrote" in capsys.readouterr().out


def test_cache_cli_resumes(cache, capsys):
    from readtalk.cli.data import cmd_cache
    from readtalk.cli.main import build_parser

    parser = build_parser()
    args = ["cache", "--data", str(cache["data"]), "--vae", str(cache["vae"])]
    args += ["--speech", str(cache["speech"]), "--out", str(cache["out"]), "--quiet"]
    args += ["--frames", str(FRAMES), "--size", str(SIZE), "--front-end", "logmel"]
    args += ["--shard-size", "4"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache["out"].glob("shard_*.pt")}
    cmd_cache(parser.parse_args(args))
    assert {p.name: p.stat().st_mtime_ns for p in cache["out"].glob("shard_*.pt")} == mtimes
    assert "18" not in capsys.readouterr().err


def test_evaluation_samples_are_written_and_scored(cache, tmp_path):
    cfg = dataclasses.replace(_run_cfg(cache["out"], 2, eval_every=2), samples=2)
    train_dit(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "test_sample_mouth_visible" in r][-1]
    assert 0.0 <= last["test_sample_mouth_visible"] <= 1.0
    assert "test_recon_mouth_corr" in last and "test_sample_mouth_corr" in last
    assert "test_sample_mouth_dark_corr" in last and "test_recon_mouth_dark_corr" in last
    assert (tmp_path / "run/samples/step_0000002.mp4").is_file()
    sheet = read_image(tmp_path / "run/samples/step_0000002.png")
    assert sheet.shape[0] > 2 * SIZE  # one row per sampled window
    with pytest.raises(ReadtalkError, match="samples must be"):
        dataclasses.replace(cfg, samples=-1).validate()


def test_samples_need_the_cache_vae(cache, tmp_path):
    import shutil

    moved = tmp_path / "cache"
    shutil.copytree(cache["out"], moved)
    meta = json.loads((moved / "meta.json").read_text())
    meta["vae"]["path"] = str(tmp_path / "gone.safetensors")
    (moved / "meta.json").write_text(json.dumps(meta))
    cfg = dataclasses.replace(_run_cfg(moved, 2, eval_every=2), samples=1)
    with pytest.raises(ReadtalkError, match="samples need the cache's VAE"):
        train_dit(cfg, tmp_path / "run", progress=False)


def test_ema_warmup_forgets_the_initialisation():
    from readtalk.train.common import ema_decay_at

    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 10**6) == 0.999
    # the share of the random initialisation left in the average after a 2,500-step run
    left = math.prod(ema_decay_at(0.999, n) for n in range(1, 2501))
    assert left < 1e-6 < 0.08 < 0.999**2500


def test_eval_dit_cli(cache, tmp_path, capsys):
    from readtalk.cli import main

    run = tmp_path / "run"
    train_dit(_run_cfg(cache["out"], 2), run, progress=False)
    out = tmp_path / "gain.json"
    args = ["eval-dit", "--weights", str(run), "--cache", str(cache["out"]), "--json", str(out)]
    assert main(args) == 0
    assert "without the speech" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["audio_gain"] == pytest.approx(res["loss_no_speech"] - res["loss"])
    assert res["windows"] == len(CachedLatents(cache["out"], "test"))
    assert (
        main(["eval-dit", "--weights", str(tmp_path / "none"), "--cache", str(cache["out"])]) == 2
    )
    assert "error:" in capsys.readouterr().err


def test_augmented_speech_cache_keeps_the_latents_and_changes_the_codes(cache, tmp_path):
    """--augment: the same windows and latents, other speech codes for the augmented clips,
    the same codes again when rebuilt with the same seed; recorded in the settings."""
    aug = _cfg(cache["data"], "", cache["speech"], latents_from=str(cache["out"]), augment=1.0)
    build_cache(aug, tmp_path / "a", progress=False)
    build_cache(aug, tmp_path / "b", progress=False)
    a, b, old = (
        CachedLatents(tmp_path / "a"),
        CachedLatents(tmp_path / "b"),
        CachedLatents(cache["out"]),
    )
    assert torch.equal(a.latent, old.latent) and torch.equal(a.audio, b.audio)
    assert not torch.allclose(a.audio, old.audio)
    assert a.meta["settings"]["augment"] == 1.0 and "augment" not in old.meta["settings"]
    none = _cfg(cache["data"], "", cache["speech"], latents_from=str(cache["out"]), augment=0.0)
    build_cache(none, tmp_path / "c", progress=False)
    assert torch.allclose(CachedLatents(tmp_path / "c").audio, old.audio, atol=1e-6)
    with pytest.raises(ReadtalkError, match="--augment"):
        build_cache(dataclasses.replace(aug, augment=1.5), tmp_path / "d", progress=False)
