"""What every training stage shares: the run folder, logging, checkpoints, schedules, seeding.

A run folder holds ``config.yaml`` (the resolved config), ``log.txt``, ``metrics.jsonl`` (one
JSON object per logged step or evaluation) and ``checkpoints/step_XXXXXXX.pt`` (full training
state for exact resume, written atomically, the last N kept). Release weights are separate: a
single safetensors file with the config as JSON in its metadata (``save_release``).

Exact resume: each stage draws its batches from a generator seeded by (seed, step), and
checkpoints hold the model, optimiser, EMA and step, so stopping at step k and resuming gives
the same numbers as never stopping.

Under ``torchrun`` (``dist.py``, docs/multigpu.md) the same code runs on every rank: each takes
its share of the step's global batch, gradients are averaged, and rank 0 alone logs, writes
metrics, evaluates (every rank, when the model is sharded) and saves.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from readtalk.config import save_config
from readtalk.errors import ReadtalkError
from readtalk.release import atomic_save
from readtalk.train import dist
from readtalk.train.optim import OptimConfig, cosine_lr


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The data generator of one step: batches are a pure function of (seed, step)."""
    return np.random.default_rng(np.random.SeedSequence([seed, step]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_run(cfg: Any, out: str | Path, resume: bool) -> Run:
    """Validate a stage config (it has ``validate()`` and ``train: OptimConfig``), join the
    process group under torchrun, open its run folder (rank 0 writes), and set the device
    (``run.device``), threads and seeds."""
    cfg.validate()
    device = dist.setup(cfg.train.device)
    run = Run(out, cfg, resume, writer=dist.is_main())
    dist.barrier()  # the folder exists before any rank reads it
    run.device = device
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    return run


class Run:
    """A training run folder: logging, metrics and checkpoints (rank 0 only writes)."""

    _CKPT = re.compile(r"step_(\d{7})\.pt$")

    def __init__(self, root: str | Path, config: Any, resume: bool, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer
        self.ckpt_dir = self.root / "checkpoints"
        self.device = torch.device("cpu")  # where the stage trains (start_run sets it)
        if writer:
            if self.root.exists() and any(self.root.iterdir()) and not resume:
                raise ReadtalkError(
                    f"run folder {self.root} is not empty: pass --resume to continue it, "
                    "or choose a new --out"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            save_config(config, self.root / "config.yaml")
        self._t0 = time.perf_counter()

    def log(self, msg: str) -> None:
        if not self.writer:
            return
        with open(self.root / "log.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    def metrics(self, record: dict) -> None:
        if not self.writer:
            return
        record = {
            k: (float(v) if isinstance(v, torch.Tensor | np.floating) else v)
            for k, v in record.items()
        }
        record.setdefault("time", round(time.perf_counter() - self._t0, 3))
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.iterdir() if self._CKPT.search(p.name))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, state: dict, step: int, keep_last: int) -> Path | None:
        if not self.writer:
            return None
        path = self.ckpt_dir / f"step_{step:07d}.pt"
        atomic_save({**state, "step": step}, path)
        for old in self.checkpoints()[:-keep_last]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> dict | None:
        path = self.latest()
        if path is None:
            return None
        try:  # memory-mapped: the ranks of one node share the file's pages
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as e:  # a truncated file cannot exist (atomic writes), but be clear
            raise ReadtalkError(f"cannot read checkpoint {path}: {e}") from None

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop records logged after the checkpoint's step (they will be redone)."""
        path = self.root / "metrics.jsonl"
        if not self.writer or not path.is_file():
            return
        keep = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        path.write_text("".join(line + "\n" for line in keep))


# ----------------------------------------------------------------------------------- the loop


def fit(
    run: Run,
    tc: OptimConfig,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[np.random.Generator], dict[str, torch.Tensor]],
    evaluate: Callable[[], dict[str, float]] | None,
    config: dict,
    desc: str,
    progress: bool = True,
    stop_at: int | None = None,
    resume: bool = False,
    ema: torch.nn.Module | None = None,
    ema_decay: float = 0.999,
) -> bool:
    """The training loop every stage shares; returns False when stopped early by ``stop_at``.

    ``loss_fn(rng)`` computes one step's losses from that step's generator (``step_rng``) and
    returns a dict whose ``"loss"`` is minimised; every entry is logged (averaged over ranks).
    It is a plain function, run here through ``dist.parallelize`` (DDP under torchrun), or the
    module ``dist.parallelize`` returned for it (needed for FSDP2, which shards the model before
    the optimiser is built). ``model`` is the network itself (unwrapped, or sharded in place).
    ``evaluate()`` runs every ``eval_every`` steps and at the end, on rank 0 (on every rank when
    the model is sharded; rank 0 logs). Resuming loads the model and optimiser from the run's
    latest checkpoint and drops metrics logged after it, so the numbers continue exactly.
    ``ema`` (optional, a copy of ``model``, sharded like it) is updated after every optimiser
    step as ``ema = d * ema + (1 - d) * model`` (buffers copied) with the warm-up
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` steps (``ema_decay_at``), and checkpointed
    under "ema". Checkpoints hold the unwrapped modules' full states (``dist.state_dict``).
    """
    if isinstance(loss_fn, torch.nn.Module):
        step_fn = loss_fn
    else:
        if dist.parallel_mode(model, tc.parallel) == "fsdp":
            raise ReadtalkError(
                "FSDP2 must shard the model before its optimiser is built: pass "
                "dist.parallelize(TrainStep(model, loss_fn), tc) to fit"
            )
        step_fn = dist.parallelize(dist.TrainStep(model, loss_fn), tc)
    device = run.device
    start = 0
    state = run.load_latest() if resume else None
    if state is not None:
        dist.load_state_dict(model, state["model"], opt, state["optim"])
        if ema is not None:
            if "ema" not in state:
                raise ReadtalkError("the checkpoint to resume holds no EMA weights")
            dist.load_state_dict(ema, state["ema"])
        start = state["step"]
        run.truncate_metrics(start)
        run.log(f"resumed at step {start}")
        del state
    sharded = dist.is_sharded(model)
    model.train()
    bar = tqdm(
        range(start, tc.steps),
        initial=start,
        total=tc.steps,
        desc=desc,
        unit="step",
        disable=not progress or not dist.is_main(),
    )
    t_log = time.perf_counter()
    for step in bar:
        if stop_at is not None and step >= stop_at:
            bar.close()
            return False
        lr = cosine_lr(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        with dist.autocast(tc.precision, device):
            losses = step_fn(step_rng(tc.seed, step))
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        clip = getattr(model, "clip_grad_norm", None)  # a model with its own clipping
        grad_norm = (
            clip(tc.grad_clip)
            if clip is not None
            else torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        )
        opt.step()
        if ema is not None:
            _ema_update(ema, model, ema_decay_at(ema_decay, step + 1))
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            dt = time.perf_counter() - t_log
            t_log = time.perf_counter()
            n = tc.log_every if done % tc.log_every == 0 else done % tc.log_every
            losses = dist.mean_over_ranks(losses)  # the global batch's values
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
                grad_norm = grad_norm.full_tensor()
            record = {
                "step": done,
                **{k: v.item() for k, v in losses.items()},
                "lr": lr,
                "grad_norm": grad_norm.item(),
                "steps_per_s": round(n / dt, 3),
            }
            if device.type == "cuda":
                record["max_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            run.metrics(record)
            bar.set_postfix(loss=f"{losses['loss'].item():.4f}")
        if evaluate is not None and (done % tc.eval_every == 0 or done == tc.steps):
            if sharded or dist.is_main():  # a sharded forward needs every rank
                model.eval()
                with torch.no_grad(), dist.autocast(tc.precision, device):
                    res = evaluate()
                model.train()
                run.metrics({"step": done, **{f"test_{k}": v for k, v in res.items()}})
                run.log(f"step {done}: test {json.dumps(res)}")
            dist.barrier()
        if done % tc.ckpt_every == 0 or done == tc.steps:
            weights, optim = dist.state_dict(model, opt)  # every rank (FSDP2 gathers)
            ckpt = {"model": weights, "optim": optim, "config": config}
            if ema is not None:
                ckpt["ema"] = dist.state_dict(ema)[0]
            run.save(ckpt, done, tc.keep_last)  # rank 0
            dist.barrier()
    bar.close()
    return True


def ema_decay_at(decay: float, steps: int) -> float:
    """The EMA decay after ``steps`` optimiser steps: ``min(decay, (1 + n) / (10 + n))``.

    Without the warm-up a 0.999 average still holds 0.999^n of the random initialisation after
    n steps (8 % at 2,500 steps, enough to spoil a short run's samples); with it the average
    covers about the last 10 % of the steps until it reaches ``decay``."""
    return min(decay, (1.0 + steps) / (10.0 + steps))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)
