import dataclasses

import pytest
import torch

from readtalk.dit import DIT_SIZES, A2VDiT, DiTConfig, num_params
from readtalk.dit.model import timestep_embedding
from readtalk.dit.rope import apply_rope, rope_axis_dims, rope_tables, sequence_positions
from readtalk.errors import ReadtalkError

DEBUG = DIT_SIZES["debug"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(perturb: bool = True, seed: int = 0, **changes) -> A2VDiT:
    """A debug model; ``perturb`` moves every weight off its (partly zero) initialisation."""
    torch.manual_seed(seed)
    model = A2VDiT(dataclasses.replace(DEBUG, **changes))
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
    return model


def inputs(b=2, f=3, h=2, w=3, cfg=DEBUG, seed=1):
    g = torch.Generator().manual_seed(seed)
    c, a = cfg.latent_channels, cfg.audio_dim
    return dict(
        x=torch.randn(b, c, f, h, w, generator=g),
        t=torch.rand(b, 1 + f, generator=g),
        ref=torch.randn(b, c, 1, h, w, generator=g),
        audio=torch.randn(b, f, a, generator=g),
    )


def changed(a, b):
    return not torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("b, f, h, w", [(1, 1, 1, 1), (2, 3, 2, 3), (1, 5, 4, 4), (2, 2, 8, 8)])
def test_output_shape_drops_the_reference(b, f, h, w):
    out = make()(**inputs(b, f, h, w))
    assert out.shape == (b, DEBUG.latent_channels, f, h, w)
    assert torch.isfinite(out).all()


def test_wrong_shapes_are_clear_errors():
    model, inp = make(perturb=False), inputs()
    with pytest.raises(ReadtalkError, match="timesteps"):
        model(**{**inp, "t": inp["t"][:, 1:]})
    with pytest.raises(ReadtalkError, match="speech codes"):
        model(**{**inp, "audio": inp["audio"][:, 1:]})
    with pytest.raises(ReadtalkError, match="reference"):
        model(**{**inp, "ref": inp["ref"][..., :1]})
    with pytest.raises(ReadtalkError, match="channels"):
        model(**{**inp, "x": inp["x"][:, :4]})
    with pytest.raises(ReadtalkError, match="multiple"):
        DiTConfig(width=64, heads=3)


def test_config_round_trips_through_json():
    for cfg in DIT_SIZES.values():
        assert DiTConfig.from_json(cfg.to_json()) == cfg


# --------------------------------------------------------------------------- init and inputs


@pytest.mark.parametrize("shared", [True, False])
def test_fresh_model_outputs_zero(shared):
    model = make(perturb=False, shared_adaln=shared, audio_window=1)
    assert torch.equal(model(**inputs()), torch.zeros(2, 8, 3, 2, 3))


@pytest.mark.parametrize("shared", [True, False])
def test_output_depends_on_t_audio_ref_and_rows_are_independent(shared):
    model, inp = make(shared_adaln=shared), inputs()
    base = model(**inp)
    assert torch.equal(model(**inp), base)  # deterministic: nothing hidden
    for key in ("x", "t", "ref", "audio"):
        new = inp[key].clone()
        new[1] = torch.rand_like(new[1]) if key == "t" else torch.randn_like(new[1])
        out = model(**{**inp, key: new})
        assert changed(out[1], base[1]), key
        assert torch.allclose(out[0], base[0], atol=1e-6), key  # row 0 untouched


@pytest.mark.parametrize("j", [0, 1, 3])
def test_each_frame_timestep_matters(j):
    """Column 0 is the reference's timestep; columns 1..f the video frames'."""
    model, inp = make(), inputs(f=3)
    base = model(**inp)
    t = inp["t"].clone()
    t[:, j] = (t[:, j] + 0.5) % 1
    assert changed(model(**{**inp, "t": t}), base)


def test_timestep_modulation_is_per_frame():
    """In the shared adaLN the modulation of frame i is a function of t[:, i] only."""
    model, inp = make(), inputs(f=3)

    def emb(t):
        return model.t_mod(torch.nn.functional.silu(model.t_embed(timestep_embedding(t, 256))))

    t = inp["t"].clone()
    base = emb(t)
    t[:, 2] += 0.3
    new = emb(t)
    assert changed(new[:, 2], base[:, 2])
    assert torch.equal(new[:, [0, 1, 3]], base[:, [0, 1, 3]])


def test_dropped_audio_and_reference_are_ignored():
    model, inp = make(audio_window=1), inputs()
    keep = torch.tensor([True, True])
    drop0 = torch.tensor([False, True])
    for key, mask_name in (("audio", "audio_mask"), ("ref", "ref_mask")):
        base = model(**inp, **{mask_name: drop0})
        assert torch.allclose(model(**inp, **{mask_name: keep}), model(**inp))  # default: keep
        assert changed(base[0], model(**inp)[0])  # dropping does something
        assert torch.allclose(base[1], model(**inp)[1], atol=1e-6)  # only to its own row
        new = inp[key].clone()
        new[0] = torch.randn_like(new[0]) * 3
        out = model(**{**inp, key: new}, **{mask_name: drop0})
        assert torch.allclose(out[0], base[0], atol=1e-6), key  # dropped row ignores its input
        new[1] = torch.randn_like(new[1])
        out = model(**{**inp, key: new}, **{mask_name: drop0})
        assert changed(out[1], base[1]), key  # the kept row still listens


def test_dropped_audio_is_the_null_embedding():
    model, inp = make(), inputs(f=4)
    ctx, mask = model.audio_context(inp["audio"], torch.tensor([False, True]))
    assert mask is None
    null = model.null_audio.expand(4, -1, -1)  # (f, n, D)
    assert torch.equal(ctx.view(2, 4, 2, -1)[0], null)
    assert changed(ctx.view(2, 4, 2, -1)[1], null)


# ------------------------------------------------------------------------ frame-level locality


@pytest.mark.parametrize("k", [0, 1, 2])
def test_cross_attention_is_frame_local(k):
    """The cross-attention output of frame i depends on speech codes i-k..i+k only."""
    f = 6
    model, inp = make(audio_window=k), inputs(f=f, h=2, w=2)
    cross = model.blocks[0].cross
    b, s = 2, 4
    h = torch.randn(b * f, s, DEBUG.width)
    base = cross(h, *model.audio_context(inp["audio"]))
    for j in range(f):
        audio = inp["audio"].clone()
        audio[:, j] = torch.randn_like(audio[:, j])
        out = cross(h, *model.audio_context(audio)).view(b, f, s, -1)
        for i in range(f):
            same = torch.allclose(out[:, i], base.view(b, f, s, -1)[:, i], atol=1e-6)
            assert same == (abs(i - j) > k), (i, j)
    # and frame i's output depends on its own tokens only
    h2 = h.view(b, f, s, -1).clone()
    h2[:, 2] = torch.randn_like(h2[:, 2])
    out = cross(h2.view(b * f, s, -1), *model.audio_context(inp["audio"])).view(b, f, s, -1)
    others = [0, 1, 3, 4, 5]
    assert torch.allclose(out[:, others], base.view(b, f, s, -1)[:, others], atol=1e-6)


def test_edge_frames_with_a_window_are_finite():
    model = make(audio_window=2)
    out = model(**inputs(f=1))  # every neighbour of the only frame is out of range
    assert torch.isfinite(out).all()
    ctx, mask = model.audio_context(torch.randn(1, 3, 8))
    assert ctx.shape == (3, 5 * 2, DEBUG.width) and mask.shape == (3, 1, 1, 10)
    assert mask.view(3, 5, 2)[:, :, 0].tolist() == [
        [False, False, True, True, True],
        [False, True, True, True, False],
        [True, True, True, False, False],
    ]


# ------------------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rope_depends_on_relative_position_per_axis(axis):
    torch.manual_seed(0)
    dh = 64
    q, k = torch.randn(2, dh, dtype=torch.float64).float().unbind(0)

    def dot(pq, pk):
        pos = torch.zeros(2, 3)
        pos[0, axis], pos[1, axis] = pq, pk
        cos, sin = rope_tables(pos, dh)
        rq = apply_rope(q[None], cos[:1], sin[:1])
        rk = apply_rope(k[None], cos[1:], sin[1:])
        return (rq * rk).sum()

    for p, d in ((3.0, 2.0), (7.0, -5.0), (1.5, 4.0)):
        assert torch.allclose(dot(p, p + d), dot(0.0, d), atol=1e-4)
    assert not torch.allclose(dot(0.0, 1.0), dot(0.0, 3.0), atol=1e-3)
    # rotation by one axis touches only that axis's channels
    dims = rope_axis_dims(dh)
    lo, hi = sum(dims[:axis]), sum(dims[: axis + 1])
    pos = torch.zeros(1, 3)
    pos[0, axis] = 5.0
    cos, sin = rope_tables(pos, dh)
    rq = apply_rope(q[None], cos, sin)[0]
    keep = torch.ones(dh, dtype=torch.bool)
    keep[lo:hi] = False
    assert torch.allclose(rq[keep], q[keep]) and changed(rq[lo:hi], q[lo:hi])


def test_rope_preserves_norm_and_dtype():
    cos, sin = rope_tables(torch.randn(5, 3) * 10, 16)
    x = torch.randn(2, 4, 5, 16)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


def test_sequence_positions_put_the_reference_before_the_video():
    pos = sequence_positions(2, 2, 3, ref_pos=0.0)
    assert pos.shape == (3 * 6, 3)
    assert pos[:, 0].tolist() == [0.0] * 6 + [1.0] * 6 + [2.0] * 6
    assert pos[:6, 1:].tolist() == [[r, c] for r in range(2) for c in range(3)]
    assert sequence_positions(1, 1, 1, ref_pos=-4.0)[:, 0].tolist() == [-4.0, 1.0]


def test_rope_tables_are_cached_and_safe_after_inference_mode():
    model, inp = make(), inputs()
    with torch.inference_mode():
        model(**inp)
    assert len(model._tables_cache) == 1
    model(**inp).square().mean().backward()  # the cached tables can be saved for backward
    assert len(model._tables_cache) == 1
    model.float()  # moving / casting the model drops the cache
    assert not model._tables_cache


# ---------------------------------------------------------------------------------- sizes


def test_sizes_and_paper_parameter_count():
    counts = {name: num_params(cfg) for name, cfg in DIT_SIZES.items()}
    for name, n in counts.items():
        print(f"DiT {name}: {n:,} parameters")
    assert 1.9e9 <= counts["paper"] <= 2.2e9
    assert counts["debug"] < counts["tiny"] < counts["small"] < counts["base"] < counts["paper"]
    assert counts["tiny"] < 10e6 and counts["small"] < 40e6


def test_paper_size_runs_on_the_meta_device():
    cfg = DIT_SIZES["paper"]
    with torch.device("meta"):
        model = A2VDiT(cfg)
        out = model(**inputs(1, 16, 16, 16, cfg=cfg))  # inputs are created on meta too
    assert out.shape == (1, 128, 16, 16, 16) and out.device.type == "meta"


# ---------------------------------------------------------------------------- training paths


@pytest.mark.parametrize("shared", [True, False])
def test_backward_reaches_every_parameter_and_checkpointing_matches(shared):
    model, inp = make(shared_adaln=shared, audio_window=1), inputs()
    mask = torch.tensor([True, False])

    def grads():
        model.zero_grad(set_to_none=True)
        model(**inp, audio_mask=mask, ref_mask=mask).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert set(plain) == {n for n, _ in model.named_parameters()}
    model.gradient_checkpointing = True
    ckpt = grads()
    for n, g in plain.items():
        assert torch.allclose(ckpt[n], g, rtol=1e-5, atol=1e-7), n


def test_fresh_model_still_learns():
    """adaLN-Zero: at init only the final layer gets a gradient, but it is non-zero."""
    model, inp = make(perturb=False), inputs()
    (model(**inp) - 1).square().mean().backward()
    assert model.final.weight.grad.abs().sum() > 0


def test_bf16():
    model, inp = make(), inputs()
    ref = model(**inp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inp)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    model = model.to(torch.bfloat16)
    out = model(**{k: v.bfloat16() for k, v in inp.items()}, audio_mask=torch.tensor([1, 0]) > 0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_compiles_as_one_graph():
    """No data-dependent Python control flow: dynamo traces forward (and the checkpointed
    blocks) without graph breaks. The eager backend keeps the test cheap."""
    model, inp = make(audio_window=1), inputs()
    mask = torch.tensor([True, False])
    want = model(**inp, audio_mask=mask, ref_mask=mask)
    model.gradient_checkpointing = True
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    out = compiled(**inp, audio_mask=mask, ref_mask=mask)
    out.square().mean().backward()
    assert torch.allclose(out, want, atol=1e-6)
