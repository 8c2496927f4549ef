"""SyncNet: the official layout, weights loading, MFCCs, Sync-C/D scoring and training."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from readtalk.cli import main
from readtalk.errors import ReadtalkError
from readtalk.eval import syncnet
from readtalk.eval.syncnet import (
    SYNCNET_SIZES,
    SyncNet,
    load_syncnet,
    mfcc,
    score_distances,
    sync_scores,
    window_distances,
)
from readtalk.train.optim import OptimConfig
from readtalk.train.syncnet import SyncNetRunConfig, train_syncnet

# The official syncnet_v2 layout (SyncNetModel.py of joonson/syncnet_python): weight shapes of
# the convolutions / linears that a BatchNorm follows (at the next Sequential index) ...
OFFICIAL_BN_FOLLOWED = {
    "netcnnaud.0": (64, 1, 3, 3),
    "netcnnaud.4": (192, 64, 3, 3),
    "netcnnaud.8": (384, 192, 3, 3),
    "netcnnaud.11": (256, 384, 3, 3),
    "netcnnaud.14": (256, 256, 3, 3),
    "netcnnaud.18": (512, 256, 5, 4),
    "netfcaud.0": (512, 512),
    "netfclip.0": (512, 512),
    "netcnnlip.0": (96, 3, 5, 7, 7),
    "netcnnlip.4": (256, 96, 1, 5, 5),
    "netcnnlip.8": (256, 256, 1, 3, 3),
    "netcnnlip.11": (256, 256, 1, 3, 3),
    "netcnnlip.14": (256, 256, 1, 3, 3),
    "netcnnlip.18": (512, 256, 1, 6, 6),
}
# ... and the two output linears.
OFFICIAL_PLAIN = {"netfcaud.3": (1024, 512), "netfclip.3": (1024, 512)}


def official_shapes() -> dict[str, tuple]:
    out = {}
    for name, shape in {**OFFICIAL_BN_FOLLOWED, **OFFICIAL_PLAIN}.items():
        out[f"{name}.weight"] = shape
        out[f"{name}.bias"] = shape[:1]
        if name in OFFICIAL_BN_FOLLOWED:
            seq, idx = name.split(".")
            bn = f"{seq}.{int(idx) + 1}"
            for k in ("weight", "bias", "running_mean", "running_var"):
                out[f"{bn}.{k}"] = shape[:1]
            out[f"{bn}.num_batches_tracked"] = ()
    return out


def random_official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in official_shapes().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            state[k] = torch.randn(shape, generator=g) / fan_in**0.5
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(random_official_state(), path)
    return path


def test_v2_matches_official_layout():
    got = {k: tuple(v.shape) for k, v in SyncNet(SYNCNET_SIZES["v2"]).state_dict().items()}
    assert got == official_shapes()
    assert len(got) == 102


def test_official_file_loads_strict_and_scores(official_file, tmp_path):
    model, crop = load_syncnet(official_file)
    assert crop == "full" and not model.training
    ref = random_official_state()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # pre-0.4 files have no num_batches_tracked counters: still accepted
    old = {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.model")
    load_syncnet(tmp_path / "old.model")

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (11, 80, 64, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(11 * 640)).astype(np.float32)
    res = sync_scores(model, frames, audio)
    assert res.windows == 6  # min(11 frames, 11 * 640 samples / 640) - 5, as the official code
    assert res.curve.shape == res.offsets.shape == (31,)
    assert np.isfinite(res.curve).all() and res.sync_c >= 0
    assert res.sync_d == pytest.approx(res.curve.min())


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"these are not weights"), "cannot read"),
        (lambda p: torch.save([torch.zeros(1)], p), "not a state dict"),
        (
            lambda p: torch.save(
                {k: v for k, v in random_official_state().items() if k != "netfclip.3.weight"}, p
            ),
            "missing key",
        ),
        (lambda p: torch.save({**random_official_state(), "extra": torch.zeros(1)}, p), "unexpect"),
        (
            lambda p: torch.save(
                {**random_official_state(), "netfcaud.3.weight": torch.zeros(8)}, p
            ),
            "shape",
        ),
    ],
)
def test_bad_weight_files_give_one_line_errors(tmp_path, make, words):
    path = tmp_path / "bad.model"
    make(path)
    with pytest.raises(ReadtalkError) as e:
        load_syncnet(path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    audio[4000:6000] = 0  # silence: exercises the zero-energy floor
    audio = audio.astype(np.float32)
    for x in (audio, audio[:300], audio[:12345]):
        ref = psf.mfcc(x.astype(np.float64) * 32768, 16000)
        ours = mfcc(x)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)


def official_pdist(feat1, feat2, vshift):
    """SyncNetInstance.calc_pdist restated: per video window, distances to the zero-padded audio
    windows vshift before to vshift after."""
    padded = F.pad(feat2, (0, 0, vshift, vshift))
    w = 2 * vshift + 1
    rows = [
        F.pairwise_distance(feat1[[i]].repeat(w, 1), padded[i : i + w]) for i in range(len(feat1))
    ]
    return torch.stack(rows)


def test_distances_and_scores_follow_the_official_code():
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(20, 6, generator=g), torch.randn(20, 6, generator=g)
    d = window_distances(v, a, vshift=4)
    torch.testing.assert_close(d, official_pdist(v, a, 4))
    mdist = d.mean(0)
    res = score_distances(d, 4)
    assert res.offset == 4 - int(torch.argmin(mdist))
    assert res.sync_c == pytest.approx(float(torch.median(mdist) - mdist.min()))


def test_sync_c_is_median_minus_min_of_a_known_curve():
    k = torch.arange(31.0)
    curve = (k - 12).abs() + 1  # column k is offset 15 - k: minimum 1 at offset +3
    res = score_distances(curve[None].repeat(7, 1), vshift=15)
    assert res.offset == 3 and res.sync_d == pytest.approx(1.0)
    assert res.sync_c == pytest.approx(9.0 - 1.0)  # sorted values 1,2,2,...,8,8,9: median 9
    assert res.curve[res.offsets == 3][0] == pytest.approx(1.0)
    assert res.windows == 7


@pytest.mark.parametrize("shift", [-7, 0, 4])
def test_scoring_finds_a_planted_offset(monkeypatch, shift):
    codes = torch.from_numpy(np.random.default_rng(2).standard_normal((120, 8))).float()
    # video window i carries code 30 + i, audio window j code 30 + j + shift: they meet at
    # j = i - shift, which the official convention calls offset = shift
    monkeypatch.setattr(syncnet, "embed_video", lambda m, crops, n, batch=32: codes[30 : 30 + n])
    monkeypatch.setattr(
        syncnet, "embed_audio", lambda m, f, n, batch=256: codes[30 + shift : 30 + shift + n]
    )
    model = SyncNet(SYNCNET_SIZES["debug"]).eval()
    frames = np.zeros((50, 64, 64, 3), np.uint8)
    res = sync_scores(model, frames, np.zeros(50 * 640, np.float32), crop="lower")
    assert res.offset == shift
    # windows whose partner lies past the clip's end meet zero padding, as in the official code
    assert res.sync_d < 0.2 * np.median(res.curve) and res.sync_c > 2.0


def test_bad_inputs():
    model = SyncNet(SYNCNET_SIZES["debug"]).eval()
    frames = np.zeros((5, 64, 64, 3), np.uint8)
    with pytest.raises(ReadtalkError, match="too short"):
        sync_scores(model, frames, np.zeros(5 * 640, np.float32))
    with pytest.raises(ReadtalkError, match="crop"):
        sync_scores(model, np.zeros((20, 64, 64, 3), np.uint8), np.zeros(20 * 640), crop="mouth")
    with pytest.raises(ReadtalkError, match="uint8"):
        sync_scores(model, np.zeros((20, 64, 64, 3)), np.zeros(20 * 640))
    with pytest.raises(ReadtalkError):
        mfcc(np.zeros(0))
    for bad in ({"size": "huge"}, {"crop": "mouth"}, {"max_shift": 0}, {"data": ""}):
        with pytest.raises(ReadtalkError):
            SyncNetRunConfig(**{"data": "somewhere", **bad}).validate()


def _tiny(ds, **train) -> SyncNetRunConfig:
    tc = {
        "steps": 4,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup": 2,
        "log_every": 1,
        "eval_every": 2,
        "ckpt_every": 2,
        "threads": 1,
    }
    return SyncNetRunConfig(
        data=str(ds),
        size="debug",
        max_shift=3,
        eval_clips=1,
        train=OptimConfig(**{**tc, **train}),
    )


def _metrics(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "steps_per_s")} for r in rows]


def test_training_runs_checkpoints_and_resumes_exactly(synth_dataset, tmp_path, capsys):
    cfg = _tiny(synth_dataset)
    full = train_syncnet(cfg, tmp_path / "a", progress=False)
    assert train_syncnet(cfg, tmp_path / "b", progress=False, stop_at=2) is None
    resumed = train_syncnet(cfg, tmp_path / "b", resume=True, progress=False)
    ma, mb = load_syncnet(full)[0].state_dict(), load_syncnet(resumed)[0].state_dict()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    evals = [r for r in _metrics(tmp_path / "a") if "test_offset_acc" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert {"test_sync_c", "test_shifted_sync_c", "test_shifted_offset_acc"} <= set(evals[0])
    assert np.isfinite([r["loss"] for r in _metrics(tmp_path / "a") if "loss" in r]).all()

    # the release scores a video through the CLI (crop taken from the release)
    video = synth_dataset / "video" / "000000.mp4"
    out = tmp_path / "sync.json"
    assert main(["sync", str(video), "--weights", str(full), "--json", str(out)]) == 0
    assert "Sync-C" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["crop"] == "full" and len(res["videos"]["000000.mp4"]["curve"]) == 31
    assert main(["sync", str(video), "--weights", str(tmp_path / "nope.model")]) == 2
    assert "not found" in capsys.readouterr().err


def test_training_rejects_clips_too_short_for_the_shifts(synth_dataset, tmp_path):
    cfg = SyncNetRunConfig(data=str(synth_dataset), size="debug", max_shift=40)
    with pytest.raises(ReadtalkError, match="no training clip"):
        train_syncnet(cfg, tmp_path / "run", progress=False)
