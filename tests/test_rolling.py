"""The rolling schedule (docs/streaming.md), stated as a specification: windows that make one
8-frame latent at a time and partition the video; per-latent speech codes that hear only their
own short window; a session that streams exactly the frames offline generation gives, each
latent as soon as its audio and the lookahead have arrived; training windows cut to that shape
and guidance distillation."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch

from readtalk import Pipeline, ReadtalkError
from readtalk.data.cache import CachedLatents, build_cache
from readtalk.diffusion import Guidance, ans_sample, next_rolling, plan_rolling, timestep_schedule
from readtalk.media import SAMPLES_PER_FRAME, frames_for_samples
from readtalk.speech.frontend import load_front_end
from readtalk.speech.rolling import SpeechWindow, latent_codes, latent_span
from readtalk.speech.speechae import SPEECHAE_SIZES, SpeechAE
from readtalk.train.dit import DiffusionConfig, dit_losses, train_dit
from readtalk.train.rolling import rolling_window, self_rollout
from test_cache_dit import _cfg, _losses, _run_cfg, _synthetic_cache, _weights
from test_pipeline import _face, _random_dit, _speech, _write_models
from test_session import PIECES, _stream, piece_sizes

torch.set_num_threads(1)

SW = SpeechWindow(context=16, lookahead=2)
CONTEXT = 2


def _rolling_models(root):
    return _write_models(
        root, schedule="rolling", context_latents=CONTEXT, motion_from="latents",
        speech_window=dataclasses.asdict(SW),
    )  # fmt: skip


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return Pipeline.from_pretrained(_rolling_models(tmp_path_factory.mktemp("m") / "m"))


@pytest.fixture(scope="module")
def speech():
    return _speech(40 * SAMPLES_PER_FRAME + 100, seed=2)  # 41 frames


# ------------------------------------------------------------------------------------ the plan


@pytest.mark.parametrize("context", [1, 2, 3])
@pytest.mark.parametrize("total", [1, 5, 9, 10, 17, 41, 100])
def test_rolling_windows_partition_the_video(context, total):
    plan = plan_rolling(total, context)
    assert plan[0].out_start == 0 and plan[-1].out_stop == total
    for a, b in itertools.pairwise(plan):
        assert a.out_stop == b.out_start
    assert plan[0].latents == 2 and plan[0].motion_latents == 0
    for k, w in enumerate(plan[1:], start=1):
        m = min(context, k + 1)
        assert (w.latents, w.motion_latents) == (m + 1, m)
        g = k + 1  # the new latent, global frames 8g - 7 .. 8g
        assert w.out_start == latent_span(g)[0]
        assert w.keep_stop - w.keep_start == min(8, total - w.out_start)
        # the window's first latent stands for the last frame of global latent g - m
        assert w.frame_start == latent_span(g - m)[1] - 1
    with pytest.raises(ReadtalkError, match="context"):
        next_rolling(1, 9, 0)


# ---------------------------------------------------------------------------- per-latent codes


def test_a_latent_code_hears_only_its_window(tmp_path):
    _, sp = _weights(tmp_path)
    from readtalk.speech.speechae import load_speechae

    sae, fe = load_speechae(sp), load_front_end("logmel")
    audio = _speech(60 * SAMPLES_PER_FRAME, seed=4)
    full = latent_codes(sae, fe, audio, range(7), SW)
    assert full.shape == (1, 7, sae.cfg.code_dim if sae.cfg.kind != "raw" else full.shape[2])
    for g in (0, 1, 3, 6):
        hi = (latent_span(g)[1] + SW.lookahead) * SAMPLES_PER_FRAME
        lo = max(0, hi - SW.context * SAMPLES_PER_FRAME)
        cut = audio.copy()
        cut[:lo] = 0.0  # silence before its window, nothing after it
        alone = latent_codes(sae, fe, cut[:hi], [g], SW)
        assert torch.allclose(alone[0, 0], full[0, g], atol=1e-5), g
        # the same audio held from a later sample on (a session's trimmed buffer)
        held = latent_codes(sae, fe, audio[lo:hi], [g], SW, audio_start=lo)
        assert torch.allclose(held[0, 0], full[0, g], atol=1e-5), g
    assert not torch.allclose(full[0, 3], full[0, 4])
    with pytest.raises(ReadtalkError, match="speech context"):
        SpeechWindow(context=10, lookahead=2).validate()
    assert SpeechWindow.from_meta(None) is None
    assert SpeechWindow.from_meta(json.dumps({"context": 20, "lookahead": 1})).context == 20


# --------------------------------------------------------------------------------- the session


@pytest.mark.parametrize("piece", PIECES)
def test_rolling_streaming_equals_offline(pipe, speech, piece):
    offline = pipe(_face(), speech, seed=0, progress=False)
    assert offline.settings.schedule == "rolling" and offline.clips == 5  # 9 + 4 x 8 frames
    frames, _ = _stream(pipe, speech, piece_sizes(piece, len(speech), seed=5))
    assert len(frames) == frames_for_samples(len(speech)) == len(offline.frames) == 41
    assert np.abs(np.stack(frames).astype(int) - offline.frames.astype(int)).max() == 0


def test_each_latent_leaves_once_its_audio_and_lookahead_arrived(pipe, speech):
    s = pipe.stream(_face(), seed=0)
    first = (9 + SW.lookahead) * SAMPLES_PER_FRAME  # frames 0-8 and the lookahead
    assert s.push(speech[: first - 1]) == []
    assert len(s.push(speech[first - 1 : first])) == 9 and s.clips == 1
    for k in range(3):  # then 8 frames per 8 frames of speech
        a = first + 8 * k * SAMPLES_PER_FRAME
        got = s.push(speech[a : a + 8 * SAMPLES_PER_FRAME])
        assert len(got) == 8 and s.frames_out == 17 + 8 * k
    s.close()


def test_the_clip_schedule_and_the_rolling_one_differ_and_need_their_model(pipe, speech):
    rolled = pipe(_face(), speech, seed=0, progress=False).frames
    clips = pipe(_face(), speech, seed=0, progress=False, schedule="clips").frames
    assert len(clips) == len(rolled) and np.abs(clips.astype(int) - rolled.astype(int)).max() > 0
    with pytest.raises(ReadtalkError, match="schedule must be"):
        pipe.settings(schedule="diagonal")


def test_rolling_needs_a_model_trained_for_it(tmp_path):
    clip_model = Pipeline.from_pretrained(_write_models(tmp_path / "m"))
    with pytest.raises(ReadtalkError, match="rolling schedule needs a DiT trained for it"):
        clip_model.stream(_face(), schedule="rolling")


# ---------------------------------------------------------------------------------- training


def test_rolling_windows_are_cut_from_the_cached_ones():
    g = torch.Generator().manual_seed(0)
    z = torch.arange(4 * 8).float().view(4, 1, 8, 1, 1).expand(4, 2, 8, 2, 2).contiguous()
    audio = torch.arange(4 * 8).float().view(4, 8, 1)
    seen = set()
    for _ in range(40):
        batch = {"latent": z, "audio": audio}
        m, k = rolling_window(batch, 3, 0.2, g)
        assert k == 0  # no rollout asked for
        seen.add(m)
        n = 2 if m == 0 else m + 1
        assert batch["latent"].shape == (4, 2, n, 2, 2) and batch["audio"].shape == (4, n, 1)
        # latents and codes cut at the same place, consecutive
        assert torch.equal(batch["latent"][:, 0, :, 0, 0], batch["audio"][..., 0])
        assert torch.all(batch["audio"][:, 1:, 0] - batch["audio"][:, :-1, 0] == 1)
        if m == 0:
            assert torch.equal(batch["audio"][:, 0, 0], audio[:, 0, 0])  # a video's start
    assert seen == {0, 1, 2, 3}


def _student_and_batch(f: int):
    """A random debug DiT and a cache batch of 3 windows of ``f`` latents."""
    torch.manual_seed(0)
    model = _random_dit().eval()
    g = torch.Generator().manual_seed(1)
    batch = {
        "latent": torch.randn(3, 8, f, 2, 2, generator=g),
        "ref": torch.randn(3, 8, 1, 2, 2, generator=g),
        "audio": torch.randn(3, f, model.cfg.audio_dim, generator=g),
    }
    return model, batch


def test_distillation_learns_the_teachers_guided_velocity():
    """With Split-CFG scales 1 and 1 the guided velocity is the full condition's, so a student
    that is its teacher has a loss of 0; other scales give a positive loss."""
    model, batch = _student_and_batch(4)
    same = DiffusionConfig(rolling_context=2, teacher="x", teacher_alpha=1.0, teacher_beta=1.0)
    loss = dit_losses(model, batch, same, torch.Generator().manual_seed(2), teacher=model)
    assert float(loss["loss"]) < 1e-10
    guided = dataclasses.replace(same, teacher_beta=6.0)
    loss = dit_losses(model, batch, guided, torch.Generator().manual_seed(2), teacher=model)
    assert float(loss["loss"]) > 1e-4


def test_a_self_rollout_window_is_cut_longer_and_made_as_a_session_makes_it():
    """``rollout``: windows ``k`` latents longer (k in 1..K as the cache allows, for p_self of
    them); ``self_rollout`` replaces the latents past the first ``m`` with the model's own,
    each sampled with ``ans_sample`` after the ``m`` before it (one pass, the floor), and
    returns the last ``m + 1``."""
    g = torch.Generator().manual_seed(3)
    z = torch.arange(2 * 8).float().view(2, 1, 8, 1, 1).expand(2, 2, 8, 2, 2).contiguous()
    audio = torch.arange(2 * 8).float().view(2, 8, 1)
    seen = set()
    for _ in range(60):
        batch = {"latent": z, "audio": audio}
        m, k = rolling_window(batch, 3, 0.0, g, rollout=2, p_self=0.5)
        seen.add((m, k))
        assert 1 <= m <= 3 and 0 <= k <= 2
        assert batch["latent"].shape[2] == batch["audio"].shape[1] == k + m + 1
    assert {(1, 0), (1, 1), (1, 2), (3, 2)} <= seen
    # the rolled-out latents are the model's, sampled as a session samples them
    torch.manual_seed(0)
    model = _random_dit().eval()
    g = torch.Generator().manual_seed(4)
    lat = torch.randn(2, 8, 5, 2, 2, generator=g)
    ref = torch.randn(2, 8, 1, 2, 2, generator=g)
    codes = torch.randn(2, 5, model.cfg.audio_dim, generator=g)
    got = self_rollout(model, lat, ref, codes, 2, 2, torch.Generator().manual_seed(5),
                       steps=3, motion_floor=0.35)  # fmt: skip
    assert got.shape == (2, 8, 3, 2, 2)
    noise_g = torch.Generator().manual_seed(5)
    seq = lat.clone()

    def fn(x, tt, rm, am, cond):
        return model(x, tt, cond["ref"], cond["audio"], rm, am)

    for j in (2, 3):
        noise = torch.randn(2, 8, 3, 2, 2, generator=noise_g)
        out = ans_sample(
            fn, noise, timestep_schedule(3), motion=seq[:, :, j - 2 : j],
            cond={"ref": ref, "audio": codes[:, j - 2 : j + 1]}, guidance=Guidance("none"),
            motion_floor=0.35,
        )  # fmt: skip
        seq[:, :, j] = out[:, :, -1]
    assert torch.allclose(got, seq[:, :, 2:], atol=1e-6)
    assert torch.equal(got[:, :, 2], lat[:, :, 4])  # the new latent stays the true one
    assert not torch.allclose(got[:, :, :2], lat[:, :, 2:4], atol=1e-3)  # its context is made
    with pytest.raises(ValueError, match="needs 5 latents"):
        self_rollout(model, lat[:, :, :4], ref, codes[:, :4], 2, 2, g)


def test_self_rollout_targets_the_teachers_velocity_at_the_true_context():
    """A student that is its (one-pass) teacher has no loss on true-context windows, and a
    loss on windows whose context it made itself (the teacher sees the true one there)."""
    model, batch = _student_and_batch(6)
    d = DiffusionConfig(rolling_context=2, p_first=0.0, teacher="x", teacher_guidance="none",
                        self_rollout=2, p_self=0.0)  # fmt: skip
    loss = dit_losses(model, batch, d, torch.Generator().manual_seed(2), teacher=model)
    assert float(loss["loss"]) < 1e-10
    d = dataclasses.replace(d, p_self=1.0)
    loss = dit_losses(model, batch, d, torch.Generator().manual_seed(2), teacher=model)
    assert float(loss["loss"]) > 1e-4
    assert batch["latent"].shape[2] == 6  # the caller's batch is not cut
    # rollout_data = 1: the target is the true latent's, whichever the teacher
    d = dataclasses.replace(d, rollout_data=1.0)
    other = _random_dit(seed=5).eval()  # a different teacher
    losses = [
        float(dit_losses(model, batch, d, torch.Generator().manual_seed(2), teacher=t)["loss"])
        for t in (model, other)
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0] > 1e-4
    half = dataclasses.replace(d, rollout_data=0.5)
    got = dit_losses(model, batch, half, torch.Generator().manual_seed(2), teacher=other)
    assert abs(float(got["loss"]) - losses[0]) > 1e-6


def test_a_self_rollout_run_trains_and_resumes_exactly(tmp_path):
    cache_dir = _synthetic_cache(tmp_path / "cache")
    teacher = train_dit(_run_cfg(cache_dir, 2), tmp_path / "teacher", progress=False)
    d = DiffusionConfig(
        rolling_context=1, p_first=0.0, teacher=str(teacher), teacher_guidance="none",
        self_rollout=1, p_self=0.5, rollout_steps=2,
    )  # fmt: skip
    cfg = dataclasses.replace(_run_cfg(cache_dir, 6), diffusion=d, init=str(teacher))
    train_dit(cfg, tmp_path / "full", progress=False)
    assert train_dit(cfg, tmp_path / "part", progress=False, stop_at=4) is None
    train_dit(cfg, tmp_path / "part", resume=True, progress=False)
    losses = _losses(tmp_path / "full")
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert _losses(tmp_path / "part") == losses
    for bad, match in (
        ({"teacher": ""}, "needs rolling windows"),
        ({"teacher_guidance": "joint"}, "teacher_guidance"),
        ({"p_self": 2.0}, "p_self"),
        ({"rollout_data": -0.1}, "rollout_data"),
    ):
        wrong = dataclasses.replace(cfg, diffusion=dataclasses.replace(d, **bad))
        with pytest.raises(ReadtalkError, match=match):
            wrong.validate()


def test_a_rolling_cache_holds_per_latent_codes(synth_dataset, tmp_path):
    vae, sp = _weights(tmp_path)
    out = tmp_path / "cache"
    build_cache(
        _cfg(synth_dataset, vae, sp, speech_context=SW.context, speech_lookahead=SW.lookahead),
        out,
        progress=False,
    )
    c = CachedLatents(out)
    assert c.meta["speech_window"] == dataclasses.asdict(SW)
    from readtalk.data.cache import ClipSpeech
    from readtalk.data.manifest import load_manifest
    from readtalk.speech.speechae import load_speechae

    rec = next(r for r in load_manifest(synth_dataset) if r["id"] == c.ids[1])
    start = int(c.start[1])
    want = latent_codes(
        load_speechae(sp), load_front_end("logmel"), ClipSpeech()(rec), range(3), SW,
        frame_origin=start,
    )  # fmt: skip
    assert torch.allclose(c.audio[1], want[0], atol=1e-5)
    assert SPEECHAE_SIZES and SpeechAE  # the debug SpeechAE of _weights


def test_a_motion_floor_keeps_the_context_noisy(pipe, speech):
    """The floor changes the frames after the first window only (window 0 has no motion), and
    a floor outside [0, 1) is a one-line error."""
    base = pipe(_face(), speech, seed=0, progress=False).frames
    floored = pipe(_face(), speech, seed=0, progress=False, motion_floor=0.5).frames
    assert np.array_equal(base[:9], floored[:9])
    assert np.abs(base[9:].astype(int) - floored[9:].astype(int)).max() > 0
    with pytest.raises(ReadtalkError, match="motion floor"):
        pipe.settings(motion_floor=1.0)
