"""``readtalk bench gpu`` at debug size on the CPU (the GPU-only variants skip), its budget, and
the real thing on CUDA where there is one."""

import json

import pytest
import torch

from readtalk.bench import dit_flops
from readtalk.bench_gpu import _CompiledBlocks, run_gpu_bench
from readtalk.bench_gpu_report import CLIP_VARIANTS, markdown
from readtalk.cli.main import main
from readtalk.dit.model import DIT_SIZES, A2VDiT

SMALL = {"size": "debug", "res": 64, "clip_frames": 17, "steps": 2, "repeats": 1}
CUDA_ONLY = (
    "matmul_tf32",
    "forward_bf16_flash",
    "forward_bf16_efficient",
    "clip_cuda_graph",
    "clip_compile",
    "clip_compile_cuda_graph",
)
MEASURED = (
    "matmul_bf16",
    "matmul_fp32",
    "setup",
    "speech",
    "forward_fp32",
    "forward_bf16_autocast",
    "forward_bf16",
    "forward_bf16_math",
    "clip_eager",
    "vae_decode",
    "session_first_frame",
    "two_clips",
)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu")
    result = run_gpu_bench(
        **SMALL, device="cpu", front_end="logmel", budget_s=300, out=out, log=lambda _: None
    )
    return out, result


def test_cpu_run_writes_json_and_markdown(cpu_run):
    out, result = cpu_run
    data = json.loads((out / "bench_gpu.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert {"settings", "environment", "flops", "variants", "summary", "elapsed_s"} <= set(data)
    assert data["environment"]["device_type"] == "cpu"
    v = data["variants"]
    for name in MEASURED:
        assert v[name]["status"] == "ok", (name, v[name])
    for name in CUDA_ONLY:
        assert v[name]["status"] == "skipped (no CUDA)", name
    assert v["session_first_frame"]["frames"] == SMALL["clip_frames"]
    s = data["summary"]
    assert s["best_clip_variant"] == "clip_eager"
    e2e = sum(v[n]["seconds"] for n in ("clip_eager", "vae_decode", "speech"))
    assert s["e2e_fps"] == pytest.approx(SMALL["clip_frames"] / e2e)
    assert s["read_a100_clip_s"] == 4.421
    md = (out / "bench_gpu.md").read_text()
    assert markdown(data) == md  # the table is a function of the JSON
    assert "| `clip_eager` |" in md and "skipped (no CUDA)" in md and "FLOP floor" in md


def test_flop_floor_is_dit_flops_per_clip_over_bf16_peak(cpu_run):
    _, result = cpu_run
    cfg = DIT_SIZES["debug"]
    _, f, h, w = result["settings"]["latents"]
    per_clip = dit_flops(cfg, f, h, w)["total"] * SMALL["steps"] * 3
    peak = result["variants"]["matmul_bf16"]["flops_per_s"]
    s = result["summary"]
    assert s["dit_flops_clip"] == per_clip
    assert s["flop_floor_s"] == pytest.approx(per_clip / peak)
    clip = result["variants"]["clip_eager"]
    assert clip["fraction_of_bf16_peak"] == pytest.approx(s["flop_floor_s"] / clip["seconds"])
    assert clip["vs_read_a100"] == pytest.approx(clip["seconds"] / 4.421)


def test_no_budget_skips_everything(tmp_path):
    result = run_gpu_bench(**SMALL, device="cpu", budget_s=0, out=tmp_path, log=lambda _: None)
    statuses = {v["status"] for v in result["variants"].values()}
    assert statuses <= {"skipped (budget)", "skipped (no CUDA)"}
    assert result["variants"]["matmul_bf16"]["status"] == "skipped (budget)"
    assert result["summary"]["flop_floor_s"] is None and result["summary"]["e2e_fps"] is None
    assert (tmp_path / "bench_gpu.json").exists() and (tmp_path / "bench_gpu.md").exists()


def test_cli_small_budget(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["bench", "gpu", "--size", "debug", "--res", "64", "--clip-frames", "17"]
    args += ["--steps", "2", "--device", "cpu", "--front-end", "logmel", "--repeats", "1"]
    assert main([*args, "--budget-s", "2", "--out", str(out)]) == 0
    data = json.loads((out / "bench_gpu.json").read_text())
    assert data["settings"]["size"] == "debug" and data["variants"]["matmul_bf16"]["status"] == "ok"
    assert all(v["status"] != "error" for v in data["variants"].values())
    assert "| measurement |" in capsys.readouterr().out
    assert main(["bench", "gpu", "--device", "cpu", "--out", str(out)]) == 2  # paper: CUDA only


def test_compiled_blocks_match_eager():
    """The regional-compilation wrapper (traced by Dynamo, run eagerly here) gives the DiT's
    output and leaves the model's own blocks in place."""
    torch.manual_seed(0)
    dit = A2VDiT(DIT_SIZES["debug"]).eval()
    for p in dit.parameters():  # adaLN-Zero: a fresh model outputs 0; make it non-trivial
        torch.nn.init.normal_(p, std=0.05)
    x, ref = torch.randn(3, 8, 2, 2, 2), torch.randn(3, 8, 1, 2, 2)
    t, audio = torch.rand(3, 3), torch.randn(3, 2, 8)
    rm, am = torch.tensor([False, True, True]), torch.tensor([False, False, True])
    blocks = dit.blocks
    with torch.no_grad():
        want = dit(x, t, ref, audio, rm, am)
        got = _CompiledBlocks(dit, "default", backend="eager")(x, t, ref, audio, rm, am)
    assert dit.blocks is blocks
    torch.testing.assert_close(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_variants_run(tmp_path):
    """On a GPU every variant runs (debug size: seconds, plus one small compilation)."""
    result = run_gpu_bench(**SMALL, device="cuda", budget_s=400, out=tmp_path)
    errors = {k: v["error"] for k, v in result["variants"].items() if v["status"] == "error"}
    assert not errors
    for name in (*CUDA_ONLY, *CLIP_VARIANTS):
        assert result["variants"][name]["status"] == "ok", name


def test_front_end_without_packaged_whisper(monkeypatch):
    """Without the packaged weights (a bare GPU machine) the front end is a random-weight
    Whisper-tiny: the same network, so the same work."""
    import readtalk.bench_gpu as bg

    monkeypatch.setattr(bg, "default_whisper_path", lambda: None)
    fe, label = bg._front_end("auto", torch.device("cpu"))
    assert label == "whisper-tiny (random weights)" and fe.dim == 384
    assert bg._front_end("logmel", torch.device("cpu"))[1] == "logmel"
