"""readtalk.diffusion: schedules, the flow objective, Euler sampling, guidance, ANS, clip plans."""

import math
import random
from itertools import pairwise

import pytest
import torch

from readtalk.diffusion import (
    ANS_TRAIN_MODES,
    Guidance,
    add_noise,
    ans_sample,
    ans_train_timesteps,
    condition_dropout,
    flow_matching_loss,
    frame_loss_mask,
    guided_velocity,
    iter_clips,
    joint_cfg,
    noise_from_velocity,
    plan_clips,
    sample_euler,
    sample_timesteps,
    shift_timesteps,
    split_cfg,
    stitch_frames,
    timestep_density,
    timestep_schedule,
    unshift_timesteps,
    x0_from_velocity,
)
from readtalk.errors import ReadtalkError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_model(calls: list | None = None, key: str = "target"):
    """A model whose velocity is exact for data concentrated at ``cond[key]`` (a point mass):
    ``v = (z - z0*) / t`` per frame (0 where t = 0). Records (z, t, ref_mask, audio_mask)."""

    def model_fn(z, t, ref_mask, audio_mask, cond):
        if calls is not None:
            calls.append((z.clone(), t.clone(), ref_mask.clone(), audio_mask.clone()))
        tv = t[:, t.shape[1] - z.shape[2] :].to(z.dtype)  # video columns (B, f)
        tv = tv.view(z.shape[0], 1, z.shape[2], *([1] * (z.ndim - 3)))
        target = cond[key]
        return torch.where(tv > 0, (z - target) / tv.clamp_min(1e-30), torch.zeros_like(z))

    return model_fn


# ----------------------------------------------------------------------------------- schedules


def test_shift_identity_inverse_and_endpoints():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(shift_timesteps(t, 1.0), t)
    for s in (0.5, 2.0, 3.0, 7.0):
        ts = shift_timesteps(t, s)
        assert ts[0] == 0 and ts[-1] == 1
        assert (ts[1:] > ts[:-1]).all()
        torch.testing.assert_close(unshift_timesteps(ts, s), t)
        assert ((ts >= t) if s > 1 else (ts <= t)).all()
    with pytest.raises(ReadtalkError):
        shift_timesteps(t, 0.0)


@pytest.mark.parametrize("steps", [1, 4, 8, 10])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_timestep_schedule(steps, shift):
    s = timestep_schedule(steps, shift)
    assert s.shape == (steps + 1,) and s.dtype == torch.float32
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert (s[1:] < s[:-1]).all()
    if shift == 1.0:
        torch.testing.assert_close(s, torch.linspace(1, 0, steps + 1))
    with pytest.raises(ReadtalkError):
        timestep_schedule(0)


@pytest.mark.parametrize(("mean", "std", "shift"), [(0.0, 1.0, 1.0), (0.5, 1.0, 3.0), (-1, 0.5, 2)])
def test_logit_normal_samples_and_density(mean, std, shift):
    t = sample_timesteps(20000, gen(1), mean, std, shift)
    assert t.shape == (20000,) and ((t > 0) & (t < 1)).all()
    median = shift_timesteps(torch.tensor(1 / (1 + math.exp(-mean))), shift).item()
    assert abs(t.median().item() - median) < 0.01
    assert torch.equal(t, sample_timesteps(20000, gen(1), mean, std, shift))
    # the density integrates to 1 and puts half its mass below the median
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)[1:-1]
    p = timestep_density(grid, mean, std, shift)
    assert abs(torch.trapezoid(p, grid).item() - 1) < 1e-4
    below = grid <= median
    assert abs(torch.trapezoid(p[below], grid[below]).item() - 0.5) < 1e-3
    # ... and matches the samples' histogram
    hist = torch.histc(t.double(), bins=10, min=0, max=1) / t.numel()
    edges = torch.linspace(0, 1, 11, dtype=torch.float64)
    bins = [(grid >= a) & (grid < b) for a, b in pairwise(edges)]
    mass = torch.stack([torch.trapezoid(p[i], grid[i]) for i in bins])
    assert (hist - mass).abs().max() < 0.015


def test_extreme_std_stays_in_open_interval():
    t = sample_timesteps(1000, gen(2), 0.0, 60.0)
    assert ((t > 0) & (t < 1)).all()


# ----------------------------------------------------------------------------------- objective


def test_noise_path_helpers_per_frame():
    z0, eps = torch.randn(2, 3, 4, 2, 2, generator=gen(3)), torch.randn(2, 3, 4, 2, 2)
    t = torch.rand(2, 4, generator=gen(4))
    zt = add_noise(z0, eps, t)
    assert torch.allclose(zt[1, :, 2], (1 - t[1, 2]) * z0[1, :, 2] + t[1, 2] * eps[1, :, 2])
    v = eps - z0
    torch.testing.assert_close(x0_from_velocity(zt, v, t), z0)
    torch.testing.assert_close(noise_from_velocity(zt, v, t), eps)
    torch.testing.assert_close(
        add_noise(z0, eps, t[:, 0]), add_noise(z0, eps, t[:, :1].expand(2, 4))
    )
    with pytest.raises(ValueError):
        add_noise(z0, eps, torch.rand(2, 3))


def test_flow_matching_loss_zero_at_target_and_masks():
    b, f = 3, 5
    z0, eps = torch.randn(b, 4, f, 2, 2, generator=gen(5)), torch.randn(b, 4, f, 2, 2)
    pred = eps - z0
    assert flow_matching_loss(pred, z0, eps).item() == 0.0
    # a sequence that includes the reference frame (frame 0): wrong there, masked out -> 0
    bad = pred.clone()
    bad[:, :, 0] += 10.0
    mask = torch.ones(b, f, dtype=torch.bool)
    mask[:, 0] = False
    assert flow_matching_loss(bad, z0, eps).item() > 1.0
    assert flow_matching_loss(bad, z0, eps, frame_mask=mask).item() == 0.0
    assert flow_matching_loss(bad, z0, eps, frame_mask=mask[0]).item() == 0.0  # (f,) form
    # weighted mean over frames: error 1 on frame 1, 3 on frame 2, weights 1 and 3 -> 7
    bad = pred.clone()
    bad[:, :, 1] += 1.0
    bad[:, :, 2] += 3.0
    w = torch.tensor([0.0, 1.0, 3.0, 0.0, 0.0])
    assert flow_matching_loss(bad, z0, eps, frame_weights=w).item() == pytest.approx(7.0)
    per_sample = torch.tensor([[1.0], [0.0], [0.0]])  # (B, 1)
    assert flow_matching_loss(bad, z0, eps, frame_weights=per_sample).item() == pytest.approx(2.0)
    zero = torch.zeros(b, f)
    assert flow_matching_loss(bad, z0, eps, frame_weights=zero).item() == 0.0
    # gradients flow
    p = pred.clone().requires_grad_()
    (flow_matching_loss(p + 1, z0, eps, frame_mask=mask)).backward()
    assert p.grad[:, :, 0].abs().sum() == 0 and p.grad[:, :, 1:].abs().sum() > 0


def test_frame_loss_mask_drops_reference_and_clean_frames():
    t = ans_train_timesteps(6, 4, gen(6), mode="zero", p_ans=1.0)  # (6, 1 + 4)
    m = frame_loss_mask(t)
    assert m.shape == (6, 4)
    assert not m[:, 0].any() and m[:, 1:].all()  # clean motion frames carry no loss
    t = ans_train_timesteps(6, 4, gen(6), mode="scaled", p_ans=1.0)
    assert frame_loss_mask(t).all()


# ------------------------------------------------------------------------------------ guidance


def test_cfg_formulas_on_hand_made_tensors():
    u, r, a = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0]), torch.tensor([4.0, -1.0])
    # u + 2 (r - u) + 6 (a - r)
    assert torch.equal(split_cfg(u, r, a, alpha=2.0, beta=6.0), torch.tensor([11.0, -8.0]))
    assert torch.equal(split_cfg(u, r, a, alpha=1.0, beta=1.0), a)
    assert torch.equal(split_cfg(u, r, a, alpha=0.0, beta=0.0), u)
    assert torch.equal(joint_cfg(u, a, gamma=3.0), torch.tensor([10.0, -7.0]))
    assert torch.equal(joint_cfg(u, a, gamma=1.0), a)
    torch.testing.assert_close(split_cfg(u, r, a, alpha=3.0, beta=3.0), joint_cfg(u, a, gamma=3.0))


def recording_model(calls):
    """v = z + 10 ref_mask + 100 audio_mask + cond['bias'] (per row), recording every call."""

    def model_fn(z, t, ref_mask, audio_mask, cond):
        calls.append((z.shape[0], t.clone(), ref_mask.clone(), audio_mask.clone()))
        shape = (-1, *([1] * (z.ndim - 1)))
        return (
            z + 10 * ref_mask.view(shape) + 100 * audio_mask.view(shape) + cond["bias"].view(shape)
        )

    return model_fn


def test_guided_velocity_batches_passes_into_one_call():
    b = 2
    z = torch.randn(b, 3, 4, 2, 2, generator=gen(7))
    t = torch.rand(b, 5, generator=gen(8))
    bias = torch.tensor([0.5, -0.5])
    calls = []
    v = guided_velocity(recording_model(calls), z, t, {"bias": bias}, "split", 2.0, 6.0)
    assert len(calls) == 1
    n, tt, rm, am = calls[0]
    assert n == 3 * b and torch.equal(tt, torch.cat([t] * 3))
    assert rm.tolist() == [False, False, True, True, True, True]
    assert am.tolist() == [False, False, False, False, True, True]
    base = z + bias.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(v, split_cfg(base, base + 10, base + 110, alpha=2.0, beta=6.0))
    # one pass per branch gives the same
    calls2 = []
    v2 = guided_velocity(
        recording_model(calls2), z, t, {"bias": bias}, "split", 2.0, 6.0, batched=False
    )
    assert len(calls2) == 3 and all(c[0] == b for c in calls2)
    torch.testing.assert_close(v2, v)
    # joint: uncond + full
    calls3 = []
    v3 = guided_velocity(recording_model(calls3), z, t, {"bias": bias}, "joint", gamma=4.0)
    assert calls3[0][0] == 2 * b and calls3[0][2].tolist() == [False, False, True, True]
    torch.testing.assert_close(v3, joint_cfg(base, base + 110, gamma=4.0))


def test_unit_scales_equal_the_conditional_prediction():
    z, t = torch.randn(2, 3, 4, 2, 2, generator=gen(9)), torch.rand(2, 5, generator=gen(10))
    cond = {"bias": torch.tensor([1.0, 2.0])}
    cond_pred = guided_velocity(recording_model([]), z, t, cond, "none")
    split = guided_velocity(recording_model([]), z, t, cond, "split", alpha=1.0, beta=1.0)
    joint = guided_velocity(recording_model([]), z, t, cond, "joint", gamma=1.0)
    torch.testing.assert_close(cond_pred, z + 110 + cond["bias"].view(-1, 1, 1, 1, 1))
    torch.testing.assert_close(split, cond_pred)
    torch.testing.assert_close(joint, cond_pred)
    with pytest.raises(ReadtalkError):
        Guidance(mode="triple")


def test_condition_dropout():
    n = 40000
    ref, aud = condition_dropout(n, gen(11), p_drop_audio=0.2, p_drop_ref=0.1, p_drop_both=0.15)
    assert ref.dtype == torch.bool and ref.shape == (n,)
    both = (~ref & ~aud).float().mean().item()
    ref_only = (ref & ~aud).float().mean().item()  # the Split-CFG v_ref branch
    aud_only = (~ref & aud).float().mean().item()
    for got, want in ((both, 0.15), (ref_only, 0.2), (aud_only, 0.1)):
        assert abs(got - want) < 0.01
    again = condition_dropout(n, gen(11), p_drop_audio=0.2, p_drop_ref=0.1, p_drop_both=0.15)
    assert torch.equal(again[0], ref) and torch.equal(again[1], aud)
    ref, aud = condition_dropout(100, gen(12), 0.0, 0.0, 0.0)
    assert ref.all() and aud.all()
    with pytest.raises(ReadtalkError):
        condition_dropout(4, gen(), 0.6, 0.0, 0.6)


# ------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("steps", [1, 2, 3, 8, 10])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_point_mass_is_exact_for_any_steps(steps, shift):
    target = torch.randn(1, 3, 4, 2, 2, generator=gen(13)).expand(2, -1, -1, -1, -1)
    noise = torch.randn(2, 3, 4, 2, 2, generator=gen(14))
    calls = []
    out = sample_euler(
        exact_model(calls), noise, timestep_schedule(steps, shift), cond={"target": target}
    )
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)
    assert len(calls) == steps and all(c[0].shape[0] == 3 * 2 for c in calls)  # split: 3 passes


def gaussian_model(mu: float, sigma: float):
    """Exact rectified-flow velocity for data N(mu, sigma^2) (independent coordinates):
    z_t = (1 - t) x + t eps, so E[eps - x | z_t] = -mu + c(t) (z_t - (1 - t) mu) with
    c = (t - (1 - t) sigma^2) / ((1 - t)^2 sigma^2 + t^2)."""

    def model_fn(z, t, ref_mask, audio_mask, cond):
        tv = t[:, 1:].to(torch.float64).view(z.shape[0], 1, z.shape[2], 1, 1)
        var = (1 - tv) ** 2 * sigma**2 + tv**2
        c = (tv - (1 - tv) * sigma**2) / var
        return (-mu + c * (z.double() - (1 - tv) * mu)).to(z.dtype)

    return model_fn


def euler_scale(sched: torch.Tensor, sigma: float) -> float:
    """Euler on the Gaussian field is affine: z_0 = mu + a eps with a = prod(1 + dt c(t_k))."""
    a = 1.0
    for t, t_next in zip(sched[:-1].tolist(), sched[1:].tolist(), strict=True):
        a *= 1 + (t_next - t) * (t - (1 - t) * sigma**2) / ((1 - t) ** 2 * sigma**2 + t**2)
    return a


def test_euler_gaussian_data_distribution():
    mu, sigma, none = 1.5, 0.5, Guidance(mode="none")
    noise = torch.randn(8192, 1, 1, 1, 1, generator=gen(15), dtype=torch.float64)
    sched = timestep_schedule(32, 1.0).double()
    out = sample_euler(gaussian_model(mu, sigma), noise, sched, guidance=none)
    # the output distribution: N(mu, sigma^2) up to sampling error and Euler's O(1/n) bias
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.std().item() / sigma - 1) < 0.08
    # ... exactly the affine map Euler's recursion predicts, sample by sample
    a = euler_scale(sched, sigma)
    torch.testing.assert_close(out, mu + a * noise, atol=1e-9, rtol=0)
    # ... and a first-order method: the scale error halves when the steps double, towards sigma
    errs = [
        abs(euler_scale(timestep_schedule(n, 2.0).double(), sigma) - sigma) for n in (8, 16, 32)
    ]
    assert errs[0] > errs[1] > errs[2] and all(1.6 < x / y < 2.4 for x, y in pairwise(errs))
    assert abs(euler_scale(timestep_schedule(1000).double(), sigma) - sigma) < 1e-3


# ------------------------------------------------------------------------------ ANS: training


@pytest.mark.parametrize("mode", ANS_TRAIN_MODES)
@pytest.mark.parametrize("motion_frames", [1, 2])
def test_ans_train_timesteps_modes(mode, motion_frames):
    b, f, steps, shift = 4000, 6, 8, 2.0
    t = ans_train_timesteps(
        b, f, gen(16), mode=mode, p_ans=0.7, motion_frames=motion_frames, steps=steps, shift=shift
    )
    assert t.shape == (b, 1 + f)
    assert (t[:, 0] == 0).all()
    t1, t2 = t[:, 1], t[:, 1 + motion_frames]
    assert (t[:, 1 : 1 + motion_frames] == t1[:, None]).all()
    assert (t[:, 1 + motion_frames :] == t2[:, None]).all()
    assert ((t2 > 0) & (t2 <= 1 if mode == "step" else t2 < 1)).all()  # "step": t_0 = 1 too
    ans = t1 != t2
    if mode == "sync":
        assert not ans.any()
        return
    assert (t1 <= t2).all()
    assert abs(ans.float().mean().item() - 0.7) < 0.03  # p_ans
    if mode == "scaled":
        ratio = t1[ans] / t2[ans]
        assert ((ratio >= 0) & (ratio < 1)).all()
        assert abs(ratio.mean().item() - 0.5) < 0.02  # u ~ U(0, 1)
    elif mode == "step":
        sched = timestep_schedule(steps, shift)
        idx = (t2[ans][:, None] == sched[None, :-1]).float().argmax(dim=1)
        assert (t2[ans][:, None] == sched[None, :-1]).any(dim=1).all()  # t2 snapped to t_i
        assert torch.equal(t1[ans], sched[idx + 1])  # t1 = t_{i+1}
    elif mode == "zero":
        assert (t1[ans] == 0).all()


@pytest.mark.parametrize("mode", ANS_TRAIN_MODES)
def test_ans_train_without_ans_has_no_motion_frame(mode):
    t = ans_train_timesteps(500, 4, gen(17), mode=mode, p_ans=0.0)
    assert (t[:, 0] == 0).all() and (t[:, 1:] == t[:, 1:2]).all()
    t = ans_train_timesteps(500, 4, gen(17), mode="scaled", p_ans=1.0)
    assert (t[:, 1] < t[:, 2]).all()  # strict


def test_ans_train_timesteps_checks_and_determinism():
    a = ans_train_timesteps(8, 4, gen(18))
    assert torch.equal(a, ans_train_timesteps(8, 4, gen(18)))
    for kwargs in ({"mode": "bogus"}, {"p_ans": 1.5}, {"motion_frames": 4}, {"motion_frames": 0}):
        with pytest.raises(ReadtalkError):
            ans_train_timesteps(8, 4, gen(), **kwargs)


# ----------------------------------------------------------------------------- ANS: inference


def clip_tensors(b=2, f=5, m=1, seed=20):
    g = gen(seed)
    target = torch.randn(b, 3, f, 2, 2, generator=g)
    noise = torch.randn(b, 3, f, 2, 2, generator=g)
    return target, noise, target[:, :, :m].clone()


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize(("mode", "level"), [("async", 1), ("sync", 0), ("clean", None)])
def test_ans_sample_timestep_layout_and_motion_inputs(m, mode, level):
    steps, f = 6, 5
    target, noise, motion = clip_tensors(f=f, m=m)
    sched = timestep_schedule(steps, 2.0)
    calls = []
    ans_sample(
        exact_model(calls),
        noise,
        sched,
        motion=motion,
        motion_mode=mode,
        cond={"target": target},
    )
    assert len(calls) == steps
    for i, (z, t, _, _) in enumerate(calls):
        assert t.shape == (3 * 2, 1 + f)  # split guidance: 3 branches of B = 2
        s = 0.0 if level is None else sched[i + level].item()
        assert (t[:, 0] == 0).all()
        assert (t[:, 1 : 1 + m] == s).all()  # motion one step ahead (async)
        assert (t[:, 1 + m :] == sched[i].item()).all()
        want = add_noise(motion, noise[:, :, :m], s)  # same eps at every step
        torch.testing.assert_close(z[:2, :, :m], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("mode", ["async", "sync", "clean"])
def test_ans_sample_reaches_exact_target(m, mode):
    target, noise, motion = clip_tensors(m=m)
    out = ans_sample(
        exact_model(),
        noise,
        timestep_schedule(8),
        motion=motion,
        motion_mode=mode,
        cond={"target": target},
    )
    assert torch.equal(out[:, :, :m], motion)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=1e-5)


def test_ans_sample_plain_modes_never_pass_motion():
    target, noise, motion = clip_tensors(m=2)
    sched = timestep_schedule(8)
    calls = []
    cond = {"target": target}
    plain = ans_sample(
        exact_model(calls), noise, sched, motion=motion, motion_mode="plain", cond=cond
    )
    for i, (_, t, _, _) in enumerate(calls):
        assert (t[:, 0] == 0).all() and (t[:, 1:] == sched[i].item()).all()
    assert torch.equal(plain, ans_sample(exact_model(), noise, sched, motion=None, cond=cond))
    assert torch.equal(plain, sample_euler(exact_model(), noise, sched, cond=cond))
    with pytest.raises(ValueError):
        ans_sample(exact_model(), noise, sched, motion=target, cond=cond)  # m = f
    with pytest.raises(ReadtalkError):
        ans_sample(exact_model(), noise, sched, motion=motion, motion_mode="later", cond=cond)


def wobbly_model(z, t, ref_mask, audio_mask, cond):
    """A non-trivial deterministic model: depends on z, t, both masks and the condition."""
    tv = t[:, 1:].view(z.shape[0], 1, z.shape[2], 1, 1)
    shape = (-1, 1, 1, 1, 1)
    return (
        torch.tanh(z * (1 + tv))
        + 0.1 * ref_mask.view(shape)
        + cond["a"].view(shape) * (audio_mask.view(shape).float())
    )


@pytest.mark.parametrize("m", [1, 2])
def test_iter_clips_deterministic_and_chained(m):
    plan = plan_clips(100, clip_latents=4, motion_latents=m)
    conds = [{"a": torch.tensor([0.1 * k, -0.1 * k])} for k in range(len(plan))]
    sched = timestep_schedule(4)

    def run(seed):
        return list(iter_clips(wobbly_model, plan, conds, sched, (2, 3, 2, 2), generator=gen(seed)))

    a, b, c = run(21), run(21), run(22)
    assert len(a) == len(plan) >= 3
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    for prev, nxt, w in zip(a, a[1:], plan[1:], strict=False):
        assert nxt.shape[2] == w.latents
        assert torch.equal(nxt[:, :, :m], prev[:, :, -m:])  # motion = previous last latents


def test_iter_clips_reproduces_a_global_latent_sequence():
    """Clip k is the global latent window [k (f - m), k (f - m) + f); an exact model per clip
    rebuilds the whole sequence, motion latents included."""
    f, m = 4, 1
    plan = plan_clips(1 + 8 * 12, clip_latents=f, motion_latents=m)
    total_latents = (plan[-1].frame_stop - 1) // 8 + 1
    glob = torch.randn(1, 3, total_latents, 2, 2, generator=gen(23))
    for k, w in enumerate(plan):
        assert w.frame_start == 8 * k * (f - m)

    def conds(w):
        return {"target": glob[:, :, w.frame_start // 8 : w.frame_start // 8 + f]}

    clips = list(
        iter_clips(
            exact_model(), plan, conds, timestep_schedule(8), (1, 3, 2, 2), generator=gen(24)
        )
    )
    for w, clip in zip(plan, clips, strict=True):
        torch.testing.assert_close(clip, conds(w)["target"], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------- clip plans

LENGTHS = [1, 2, 8, 9, 10, 113, 120, 121, 122, 241, 457, 1017]


def check_plan(total, f, m, last):
    plan = plan_clips(total, f, m, last=last)
    assert plan[0].frame_start == 0 and plan[0].motion_latents == 0 and plan[0].keep_start == 0
    stride = 8 * (f - m) if m else 8 * (f - 1) + 1
    for k, w in enumerate(plan):
        assert w.index == k
        assert 0 <= w.keep_start < w.keep_stop <= w.frames
        assert w.latents == f or (last == "short" and k == len(plan) - 1)
        if k:
            assert w.motion_latents == m and w.keep_start == (8 * (m - 1) + 1 if m else 0)
            assert w.frame_start == plan[k - 1].frame_start + stride
            assert w.new_latents >= 1
        if k < len(plan) - 1:  # every clip but the last one is used whole
            assert w.keep_stop == w.frames
            if k:
                assert w.keep_stop - w.keep_start == stride  # 8 (f - m) new frames
    # the kept frames cover every frame exactly once, in order
    clips = [torch.arange(w.frame_start, w.frame_stop).view(1, 1, -1) for w in plan]
    assert torch.equal(stitch_frames(clips, plan).flatten(), torch.arange(total))
    if last == "short":
        assert plan[-1].frame_stop - total < 8  # fewer than 8 wasted frames
    return plan


@pytest.mark.parametrize("last", ["pad", "short"])
@pytest.mark.parametrize(("f", "m"), [(16, 1), (16, 2), (16, 0), (4, 1), (2, 1), (3, 2)])
def test_plan_covers_every_frame_once(f, m, last):
    rng = random.Random(f * 10 + m)
    for total in LENGTHS + [rng.randint(1, 3000) for _ in range(25)]:
        check_plan(total, f, m, last)


def test_plan_examples():
    assert [(w.frame_start, w.keep_start, w.keep_stop) for w in plan_clips(121, 16, 1)] == [
        (0, 0, 121)
    ]
    plan = plan_clips(457, 16, 1)  # 121 + 120 + 120 + 96
    assert [(w.frame_start, w.out_start, w.out_stop) for w in plan] == [
        (0, 0, 121),
        (120, 121, 241),
        (240, 241, 361),
        (360, 361, 457),
    ]
    assert plan[-1].frame_stop == 481  # the audio is padded with silence to 481 frames
    short = plan_clips(457, 16, 1, last="short")
    assert short[-1].latents == 1 + 12 and short[-1].frame_stop == 457  # 96 = 8 * 12 new frames
    plan = plan_clips(1017, 16, 2)  # 112 new frames per later clip
    assert len(plan) == 1 + math.ceil((1017 - 121) / 112)
    assert [w.frame_start for w in plan[:3]] == [0, 112, 224]
    assert all(w.keep_start == 9 for w in plan[1:])
    with pytest.raises(ReadtalkError):
        plan_clips(100, 16, 16)
    with pytest.raises(ReadtalkError):
        plan_clips(0, 16, 1)
    with pytest.raises(ValueError):
        stitch_frames([torch.zeros(1, 1, 5)], plan_clips(121, 16, 1))
