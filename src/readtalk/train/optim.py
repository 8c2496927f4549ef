"""The optimisation settings every training stage shares (``train.*`` in a run's config) and
the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from readtalk.errors import ReadtalkError


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 20
    eval_every: int = 500
    ckpt_every: int = 250
    keep_last: int = 3
    threads: int = 0  # torch CPU threads (0: torch's default)
    device: str = "auto"  # auto | cpu | cuda (auto: CUDA when there is one; cuda:LOCAL_RANK)
    precision: str = "fp32"  # fp32 | bf16 (autocast; float32 weights and optimiser state)
    parallel: str = "auto"  # under torchrun: ddp | fsdp (DiT) | auto (fsdp from 1e9 params)
    checkpointing: bool = False  # activation checkpointing of transformer blocks (DiT)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "ckpt_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise ReadtalkError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ReadtalkError(f"train.lr must be positive, got {self.lr}")
        for name, known in (
            ("device", ("auto", "cpu", "cuda")),
            ("precision", ("fp32", "bf16")),
            ("parallel", ("auto", "ddp", "fsdp")),
        ):
            if getattr(self, name) not in known:
                raise ReadtalkError(
                    f"train.{name} must be one of {', '.join(known)}, got {getattr(self, name)!r}"
                )


def cosine_lr(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def optimizer_steps(opt: torch.optim.Optimizer) -> int:
    """Optimiser steps taken so far (survives resume, unlike a counter)."""
    for state in opt.state.values():
        if "step" in state:
            return int(state["step"])
    return 0
