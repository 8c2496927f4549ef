"""The portrait refiner (vae.refiner) and its training stage, at debug sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from readtalk.cli import main
from readtalk.errors import ReadtalkError
from readtalk.train.optim import OptimConfig
from readtalk.train.refiner import DATA, RefinerRunConfig, train_refiner, with_refiner
from readtalk.vae.config import get_preset
from readtalk.vae.factorised import FactorisedConfig, FactorisedVAE, load_vae
from readtalk.vae.refiner import Refiner

torch.set_num_threads(1)


def _fvae(refiner_width: int = 0) -> FactorisedVAE:
    torch.manual_seed(0)
    frame = get_preset("debug")
    cfg = FactorisedConfig(
        frame=frame, channels=frame.latent_channels, width=16, refiner_width=refiner_width
    )
    return FactorisedVAE(cfg).eval()


def _video(frames=17, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


@torch.no_grad()
def test_without_a_portrait_a_refined_vae_decodes_as_its_frame_decoder():
    plain, refined = _fvae(0), _fvae(8)
    refined.load_state_dict({**refined.state_dict(), **plain.state_dict()})
    x = _video()
    z = plain.encode(x)
    assert torch.equal(refined.encode(x), z)  # the latents (and so the DiT) are unchanged
    assert torch.equal(refined.decode(z), plain.decode(z))
    assert plain.reference(x[:, :, 0]) is None  # no refiner: nothing to prepare
    from readtalk.vae.model import VideoVAE

    video_vae = VideoVAE("debug").eval()  # takes nothing from a portrait, and says so
    assert video_vae.reference(x[:, :, 0]) is None
    zv = video_vae.encode(x)
    assert torch.equal(video_vae.decode(zv, reference=None), video_vae.decode(zv))
    ref = refined.reference(x[:, :, 0])
    assert not torch.equal(refined.decode(z, reference=ref), plain.decode(z))


@torch.no_grad()
def test_at_initialisation_the_refiner_adds_a_fifth_of_the_unmoved_detail():
    r = Refiner(width=4, scale=2)
    g = torch.Generator().manual_seed(0)
    y, img, blur = (torch.rand(2, 3, 16, 16, generator=g) for _ in range(3))
    out = r(y, r.prepare(img[:1], blur[:1]))
    a, b = torch.sigmoid(torch.tensor(-1.4)), torch.sigmoid(torch.tensor(-4.0))
    want = (1 - b) * (y + a * (img[:1] - blur[:1])) + b * img[:1]
    assert torch.allclose(out, want, atol=1e-5)


@torch.no_grad()
def test_a_learnt_flow_moves_the_portrait():
    r = Refiner(width=4, scale=2)
    # flow: one pixel (2 / 16 grid units) to the right; masks: the portrait itself
    r.head.bias.copy_(torch.tensor([float(np.arctanh(2 / 16 / 0.25)), 0.0, -30.0, 30.0]))
    img = torch.zeros(1, 3, 16, 16)
    img[..., 8] = 1.0
    out = r(torch.zeros(1, 3, 16, 16), r.prepare(img, torch.zeros_like(img)))
    assert out[0, 0, 3].argmax() == 7  # each pixel shows the portrait one pixel to its right
    assert torch.allclose(out[0, 0, 3, 7], torch.tensor(1.0), atol=1e-4)


def test_refined_vae_saves_and_loads_and_plain_files_stay_plain(tmp_path):
    v = _fvae(8)
    back = load_vae(v.save(tmp_path / "r.safetensors"))
    assert back.config.refiner_width == 8 and back.refiner is not None
    x = _video(9)
    with torch.no_grad():
        z = v.encode(x)
        assert torch.equal(
            back.decode(z, reference=back.reference(x[:, :, 0])),
            v.decode(z, reference=v.reference(x[:, :, 0])),
        )
    plain = _fvae(0)
    assert "refiner_width" not in plain.config.to_dict()
    assert load_vae(plain.save(tmp_path / "p.safetensors")).refiner is None


def test_bad_references_and_sizes_are_clear():
    v = _fvae(8)
    with pytest.raises(ReadtalkError, match="reference portrait"):
        v.reference(torch.zeros(3, 64, 64))
    with pytest.raises(ReadtalkError, match="multiples of 32"):
        Refiner(scale=8).check_size(48, 64)
    with pytest.raises(ReadtalkError, match="references for a batch"):
        z = v.encode(torch.zeros(3, 3, 9, 64, 64))
        v.decode(z, reference=v.reference(torch.zeros(2, 3, 64, 64)))
    with pytest.raises(ReadtalkError, match="refiner_width"):
        FactorisedConfig(frame=get_preset("debug"), channels=8, refiner_width=-1)


@torch.no_grad()
def test_one_portrait_per_batch_row():
    v = _fvae(8)
    x = torch.cat([_video(9, seed=1), _video(9, seed=2)])
    z = v.encode(x)
    both = v.decode(z, reference=v.reference(x[:, :, 0]))
    one = v.decode(z[1:], reference=v.reference(x[1:, :, 0]))
    assert torch.allclose(both[1:], one, atol=1e-5)


def _cfg(data, vae, steps, **kw):
    tc = dict(steps=steps, batch_size=4, lr=1e-3, warmup=1, eval_every=steps, ckpt_every=2,
              log_every=1, threads=1)  # fmt: skip
    base = dict(width=4, scale=8, clips=2, window=9, frames_per_clip=3, eval_clips=1, eval_frames=9)
    return RefinerRunConfig(data=str(data), vae=str(vae), train=OptimConfig(**tc), **{**base, **kw})


@pytest.fixture(scope="module")
def base_vae(tmp_path_factory):
    return _fvae(0).save(tmp_path_factory.mktemp("rv") / "vae.safetensors")


def test_refiner_training_resumes_exactly_and_keeps_the_rest(synth_dataset, base_vae, tmp_path):
    full = train_refiner(_cfg(synth_dataset, base_vae, 4), tmp_path / "full", progress=False)
    cfg = _cfg(synth_dataset, base_vae, 4)
    assert train_refiner(cfg, tmp_path / "half", progress=False, stop_at=2) is None
    assert (tmp_path / "half" / DATA).is_file()
    train_refiner(cfg, tmp_path / "half", resume=True, progress=False)
    a, b = load_vae(full), load_vae(tmp_path / "half" / "vae.safetensors")
    for (k, t), u in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(t, u), k
    base = load_vae(base_vae)
    for k, t in base.state_dict().items():  # frame VAE, packer and statistics untouched
        assert torch.equal(a.state_dict()[k], t), k
    assert a.refiner is not None and a.config.refiner_width == 4
    lines = [json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] > 0 and "test_sharpness" in lines[-1] and "test_psnr" in lines[-1]


def test_a_round_reuses_the_reconstructions_beside_the_vae_it_continues(
    synth_dataset, base_vae, tmp_path, monkeypatch
):
    first = train_refiner(_cfg(synth_dataset, base_vae, 2), tmp_path / "r1", progress=False)
    second = train_refiner(_cfg(synth_dataset, first, 2), tmp_path / "r2", progress=False)
    a, b = tmp_path / "r1" / DATA, tmp_path / "r2" / DATA
    assert a.stat().st_ino == b.stat().st_ino  # the same file, hard-linked
    assert f"reconstructions reused from {a}" in (tmp_path / "r2" / "log.txt").read_text()
    assert load_vae(second).config.refiner_width == 4
    # other frames kept: the file beside it does not match, so the round reconstructs its own
    train_refiner(_cfg(synth_dataset, first, 2, frames_per_clip=2), tmp_path / "r3", progress=False)
    c = tmp_path / "r3" / DATA
    assert c.stat().st_ino != a.stat().st_ino
    assert torch.load(c, weights_only=False)["k"] == 2
    assert "reused" not in (tmp_path / "r3" / "log.txt").read_text()

    # a file system without hard links: the same reconstructions are saved again
    def no_link(src, dst):
        raise OSError("no hard links here")

    monkeypatch.setattr("readtalk.train.refiner.os.link", no_link)
    train_refiner(_cfg(synth_dataset, first, 2), tmp_path / "r4", progress=False)
    d = tmp_path / "r4" / DATA
    assert d.stat().st_ino != a.stat().st_ino
    assert "reconstructions reused from" in (tmp_path / "r4" / "log.txt").read_text()
    ta, td = (torch.load(f, weights_only=False)["tensors"] for f in (a, d))
    assert all(torch.equal(ta[k], td[k]) for k in ta)


def test_refiner_learns_to_copy_the_portraits_detail(synth_dataset, base_vae, tmp_path):
    """Twenty steps at a high learning rate lower the loss on the training frames."""
    cfg = _cfg(synth_dataset, base_vae, 20, grad_weight=0.0)
    cfg = RefinerRunConfig(
        **{**cfg.__dict__, "train": OptimConfig(**{**cfg.train.__dict__, "lr": 3e-3})}
    )
    train_refiner(cfg, tmp_path / "r", progress=False)
    rows = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["l1"] for r in rows if "l1" in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_cli_trains_a_refiner_and_rejects_a_video_vae(synth_dataset, base_vae, tmp_path, capsys):
    sets = ["width=4", "clips=1", "window=9", "eval_clips=1", "eval_frames=9",
            "train.batch_size=2", "train.threads=1"]  # fmt: skip
    sets = [x for kv in sets for x in ("--set", kv)]
    main(["train", "refiner", "--data", str(synth_dataset), "--vae", str(base_vae), "--out",
          str(tmp_path / "c"), "--steps", "1", "--quiet", *sets])  # fmt: skip
    assert load_vae(tmp_path / "c" / "vae.safetensors").refiner is not None
    from readtalk.vae.model import VideoVAE

    video_vae = VideoVAE("debug").save(tmp_path / "v.safetensors")
    bad = ["train", "refiner", "--data", str(synth_dataset), "--vae", str(video_vae),
           "--out", str(tmp_path / "d"), "--steps", "1", "--quiet"]  # fmt: skip
    assert main(bad) == 2
    assert "not a factorised VAE checkpoint" in capsys.readouterr().err


def test_with_refiner_keeps_an_existing_one_of_the_same_sizes_only():
    v = _fvae(8)
    assert with_refiner(v, 8, v.config.refiner_scale) is v  # training continues it
    other = with_refiner(v, 4, 8)  # other sizes: a new refiner, never the old one kept
    assert other is not v and (other.config.refiner_width, other.config.refiner_scale) == (4, 8)
    assert other.frame is v.frame and other.packer is v.packer
    w = with_refiner(_fvae(0), 4, 8)
    assert w.refiner is not None and w.config.refiner_width == 4


@pytest.mark.filterwarnings("ignore:this portrait is unlike")
def test_a_pipeline_with_a_refined_vae_streams_as_offline_and_uses_the_portrait(tmp_path):
    from readtalk import Pipeline
    from readtalk.media import SAMPLES_PER_FRAME
    from test_pipeline import _face, _speech, _write_models

    root = _write_models(tmp_path / "m")
    plain = _fvae(0)
    plain.save(root / "vae.safetensors")
    speech = _speech(20 * SAMPLES_PER_FRAME, seed=1)
    before = Pipeline.from_pretrained(root)(_face(), speech, seed=0, progress=False).frames
    refined = with_refiner(plain, 4, 8)
    with torch.no_grad():
        refined.refiner.head.bias[3] = 0.0  # half the portrait itself: visibly used
    refined.save(root / "vae.safetensors")
    pipe = Pipeline.from_pretrained(root)
    offline = pipe(_face(), speech, seed=0, progress=False).frames
    assert len(offline) == len(before) == 20
    assert np.abs(offline.astype(int) - before.astype(int)).mean() > 1
    s = pipe.stream(_face(), seed=0)
    frames = [f for i in range(0, len(speech), 320) for f in s.push(speech[i : i + 320])]
    frames += s.flush()
    assert np.array_equal(np.stack(frames), offline)


def test_box_weights_follow_the_boxes_and_the_flip():
    from readtalk.train.refiner import box_weights

    boxes = torch.tensor([[[1, 2, 3, 4], [0, 0, 1, 1]]] * 2)  # (B=2, R=2, 4)
    w = box_weights(boxes, torch.tensor([4.0, 2.0]), 8, torch.tensor([False, True]))
    assert w.shape == (2, 1, 8, 8)
    assert w[0, 0, 2:4, 1:3].eq(5).all() and w[0, 0, 0, 0] == 3 and w[0].sum() == 64 + 16 + 2
    assert torch.equal(w[1], w[0].flip(-1))  # the flipped frame's boxes are mirrored


def test_mouth_weights_come_from_synthtalk_tracks(synth_dataset, base_vae, tmp_path):
    from readtalk.data.manifest import load_manifest
    from readtalk.train.refiner import region_boxes

    cfg = _cfg(synth_dataset, base_vae, 2, mouth_weight=4.0, eye_weight=1.0)
    recs = [r for r in load_manifest(synth_dataset) if r["split"] == "train"][:2]
    boxes = region_boxes(recs, cfg, 256)
    assert boxes.shape == (2, 3, 3, 4)
    x0, y0, x1, y1 = boxes[..., 0, :].unbind(-1)  # the mouth: below the eyes, a real box
    assert (x1 > x0).all() and (y1 > y0).all() and (y0 > boxes[..., 1, 3]).all()
    train_refiner(cfg, tmp_path / "w", progress=False)
    assert "mouth and eye weights: on" in (tmp_path / "w" / "log.txt").read_text()
    with pytest.raises(ReadtalkError, match="mouth_weight"):
        _cfg(synth_dataset, base_vae, 2, mouth_weight=-1.0).validate()
