"""Training under torchrun (CPU, Gloo) and exact resume after a hard kill.

* Two ranks with half the global batch each take the same steps as one process with all of it:
  the DiT under DDP and under FSDP2, the SpeechAE and the VAE under DDP (losses, evaluations and
  released weights agree to float rounding), all from ``readtalk train ...`` under torchrun;
  a sharded run's checkpoint resumes in one process.
* A ``readtalk train dit`` process killed with SIGKILL after a checkpoint and continued with
  ``--resume`` logs exactly the numbers of a run never interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from readtalk.cli import main
from test_cache_dit import _synthetic_cache  # the same random cache as the golden test

torch.set_num_threads(1)

WORKER = """
import json, sys
from readtalk.cli import main
for argv in json.loads(open(sys.argv[1]).read()):
    assert main(argv) == 0, argv
"""


def _env() -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Four 64-px SynthTalk clips of 49 frames (about a second to make)."""
    from readtalk.data.synthtalk import SynthConfig, generate

    out = tmp_path_factory.mktemp("tiny") / "ds"
    cfg = SynthConfig(
        clips=4, size=64, frames=49, identities=2, test_fraction=0.25, workers=1, seed=3
    )
    generate(cfg, out, progress=False)
    return out


def _sets(items: dict) -> list[str]:
    return [x for k, v in items.items() for x in ("--set", f"{k}={v}")]


def _argv(stage: str, out: Path, source: Path, steps: int, **sets) -> list[str]:
    where = ["--cache", str(source)] if stage == "dit" else ["--data", str(source)]
    base = {"train.log_every": 1, "train.eval_every": 3, "train.ckpt_every": 3}
    base |= {"train.warmup": 2, "train.lr": 1e-3}
    argv = ["train", stage, *where, "--out", str(out), "--steps", str(steps), "--quiet"]
    return argv + _sets({**base, **sets})


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock entries."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    drop = ("time", "steps_per_s")
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]


def _assert_same_run(
    a: Path, b: Path, release: str, rtol: float, weights_rtol: float | None = None
) -> None:
    ra, rb = _records(a), _records(b)
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    for i, (x, y) in enumerate(zip(ra, rb, strict=True)):
        first = i == 0 and x.get("step") == 1  # step 1: no update yet
        tol = min(rtol, 1e-4) if first else rtol
        atol = 1e-7 if first else rtol * abs(x.get("loss", 0.0))  # small terms: the loss's scale
        for k in x:
            np.testing.assert_allclose(y[k], x[k], rtol=tol, atol=atol, err_msg=f"{k} {x}")
    # later steps and weights per tensor, relative to its norm: Adam turns the rounding of
    # near-zero gradients into updates of up to lr (its first step is lr * sign(g)), so
    # elementwise bounds would be loose, and the VAE's 3-D convolutions round differently for
    # other batch sizes: its numbers agree to 1e-4 at step 1 (loss and the all-reduced gradient
    # norm: what a wrong average would change) and drift after, by how much depends on the CPU
    # (about 1e-4 by step 4 on one 2-core machine; on another, 1.4e-2 in its small KL term by
    # step 4, so later terms are compared to rtol of themselves or of the loss)
    wa, wb = load_file(a / release), load_file(b / release)
    assert wa.keys() == wb.keys()
    for k in wa:
        err = (wb[k].double() - wa[k].double()).norm() / wa[k].double().norm().clamp_min(1e-12)
        assert err < (10 * rtol if weights_rtol is None else weights_rtol), (k, float(err))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_ranks_with_half_the_batch_each_match_one_process(tiny_dataset, tmp_path):
    cache = _synthetic_cache(tmp_path / "cache")
    dit = {"train.batch_size": 4, "size": "debug", "ema_decay": 0.9}
    speech = {"train.batch_size": 2, "size": "debug", "clip_frames": 17, "front_end": "logmel"}
    vae = {"train.batch_size": 2, "preset": "debug", "clip_frames": 9, "eval_frames": 9}
    vae |= {"eval_clips": 1, "motion_weight": 2.0}  # a loss normalised by a global mean
    runs = {  # name: (stage, source, steps, overrides, release)
        "dit_ddp": ("dit", cache, 6, {**dit, "train.parallel": "ddp"}, "dit.safetensors"),
        "dit_fsdp": ("dit", cache, 6, {**dit, "train.parallel": "fsdp"}, "dit.safetensors"),
        "speech": ("speech", tiny_dataset, 4, speech, "speechae.safetensors"),
        "vae": ("vae", tiny_dataset, 4, vae, "vae.safetensors"),
    }
    jobs = tmp_path / "jobs.json"
    jobs.write_text(
        json.dumps(
            [_argv(s, tmp_path / "two" / n, src, k, **o) for n, (s, src, k, o, _) in runs.items()]
        )
    )
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*cmd, str(tmp_path / "worker.py"), str(jobs)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for name, (stage, src, steps, sets, _) in runs.items():
        if name == "dit_fsdp":
            continue  # the same reference as dit_ddp
        assert main(_argv(stage, tmp_path / "one" / name, src, steps, **sets)) == 0
    ref = {"dit_ddp": "dit_ddp", "dit_fsdp": "dit_ddp", "speech": "speech", "vae": "vae"}
    for name, (stage, *_, release) in runs.items():
        rtol = 1e-2 if stage == "vae" else 1e-5  # see _assert_same_run
        wtol = 2e-2 if stage == "vae" else None  # the VAE's weights: 4e-3 measured
        _assert_same_run(tmp_path / "one" / ref[name], tmp_path / "two" / name, release, rtol, wtol)
    ckpt = torch.load(
        tmp_path / "two/dit_fsdp/checkpoints/step_0000006.pt", weights_only=False, mmap=True
    )
    assert not any(k.startswith(("module.", "model.")) for k in ckpt["model"])  # unwrapped
    assert set(ckpt["optim"]["state"]) == set(ckpt["model"])  # full, keyed by name

    # the FSDP2 run's step-3 checkpoint continues in one process as if never sharded
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "two/dit_fsdp", moved)
    (moved / "checkpoints/step_0000006.pt").unlink()
    resume = ["train", "dit", "--cache", str(cache), "--out", str(moved), "--resume", "--quiet"]
    assert main(resume) == 0
    _assert_same_run(tmp_path / "one/dit_ddp", moved, "dit.safetensors", 1e-5)


def test_a_killed_run_resumes_with_the_same_numbers(tmp_path):
    cache = _synthetic_cache(tmp_path / "cache")
    sets = {"size": "debug", "train.batch_size": 2, "train.ckpt_every": 10}
    sets |= {"train.eval_every": 40, "train.keep_last": 2, "ema_decay": 0.9}
    argv = lambda out: _argv("dit", out, cache, 160, **sets)  # noqa: E731
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "readtalk.cli", *argv(killed)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not list((killed / "checkpoints").glob("step_*.pt")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert 0 < max(steps) < 160

    resume = ["train", "dit", "--cache", str(cache), "--out", str(killed), "--resume", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "readtalk.cli", *resume],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(argv(tmp_path / "whole")) == 0
    assert _records(killed) == _records(tmp_path / "whole")
    a, b = load_file(killed / "dit.safetensors"), load_file(tmp_path / "whole" / "dit.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed at step" in (killed / "log.txt").read_text()


def test_shares_of_a_dit_batch_average_to_the_whole_batch():
    """dit_losses on two halves: the mean of their losses and gradients is the full batch's
    (the loss is normalised by the loss frames of the whole batch)."""
    from readtalk.dit import DIT_SIZES, A2VDiT
    from readtalk.train.dit import DiffusionConfig, dit_losses

    torch.manual_seed(0)
    model = A2VDiT(DIT_SIZES["debug"])
    for p in model.parameters():  # leave the zero initialisation, so every gradient flows
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(1)
    batch = {
        "latent": torch.randn(4, 8, 3, 2, 2, generator=g),
        "ref": torch.randn(4, 8, 1, 2, 2, generator=g),
        "audio": torch.randn(4, 3, 8, generator=g),
    }
    d = DiffusionConfig(ans_mode="zero", p_ans=0.5)  # halves with 5 and 6 loss frames

    def run(part: slice) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss = dit_losses(model, batch, d, torch.Generator().manual_seed(5), part)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    whole, gw = run(slice(None))
    (a, ga), (b, gb) = run(slice(0, 2)), run(slice(2, 4))
    torch.testing.assert_close((a + b) / 2, whole)
    for x, y, z in zip(ga, gb, gw, strict=True):
        torch.testing.assert_close((x + y) / 2, z, atol=1e-6, rtol=1e-5)


def test_clip_sampler_shares_concatenate_to_the_whole_batch(tiny_dataset):
    from readtalk.data.manifest import load_manifest
    from readtalk.train.vae import ClipSampler

    recs = load_manifest(tiny_dataset, "train")
    sampler = ClipSampler(recs, 9, 64, flip=True)
    whole = sampler.sample(4, np.random.default_rng(3))
    parts = [sampler.sample(4, np.random.default_rng(3), slice(i, i + 2)) for i in (0, 2)]
    assert torch.equal(torch.cat(parts), whole)


def test_options_and_their_errors(tmp_path):
    from readtalk.dit import DIT_SIZES, A2VDiT
    from readtalk.errors import ReadtalkError
    from readtalk.speech.speechae import SPEECHAE_SIZES, SpeechAE
    from readtalk.train import dist
    from readtalk.train.optim import OptimConfig

    tc = OptimConfig(checkpointing=True)
    model = A2VDiT(DIT_SIZES["debug"])
    step = dist.parallelize(dist.TrainStep(model, lambda rng: {}), tc)
    assert isinstance(step, dist.TrainStep) and model.gradient_checkpointing  # one process
    with pytest.raises(ReadtalkError, match="checkpointing applies to transformer blocks"):
        dist.parallelize(SpeechAE(SPEECHAE_SIZES["debug"]), tc)
    assert dist.share(6) == slice(0, 6) and dist.world_size() == 1
    for key, bad in (("device", "tpu"), ("precision", "fp16"), ("parallel", "zero3")):
        with pytest.raises(ReadtalkError, match=f"train.{key} must be one of"):
            OptimConfig(**{key: bad}).validate()
    if not torch.cuda.is_available():
        with pytest.raises(ReadtalkError, match="no CUDA device"):
            dist.setup("cuda")
    assert dist.setup("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_checkpoint_state_round_trips_and_reads_the_old_format():
    """dist.state_dict keys the optimiser state by parameter name; checkpoints written before
    (torch.optim's own format, keyed by index) still load."""
    from readtalk.train import dist

    def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(2):
            model(torch.randn(5, 3)).sum().backward()
            opt.step()
            opt.zero_grad()
        return model, opt

    model, opt = trained()
    weights, state = dist.state_dict(model, opt)
    assert set(state["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    for saved in (state, opt.state_dict()):
        fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
        dist.load_state_dict(fresh, weights, fresh_opt, saved)
        old, new = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
        assert all(torch.equal(old[i][k], new[i][k]) for i in old for k in old[i])
        params = zip(model.parameters(), fresh.parameters(), strict=True)
        assert all(torch.equal(a, b) for a, b in params)
