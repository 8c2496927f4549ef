"""Where generation's time goes: wall time per stage, accumulated along a run.

A ``StageTimes`` is filled by the code that does the work (the streaming session times its
speech front end, DiT sampling, VAE decoding and re-encoding; the pipeline its mp4 writing),
so that ``readtalk bench speed --profile`` and a server can say where a real run spent its
time without a profiler's overhead: one ``perf_counter`` pair per stage entry, a few hundred
per minute of video.

    times = StageTimes()
    with times.stage("dit"):
        ...
    times.as_dict()   # {"dit": {"seconds": 1.23, "calls": 4}, ...}

Nested stages are allowed and each counts its own wall time (a parent includes its
children). Not thread-safe by itself: one ``StageTimes`` per session, used under the
session's lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["StageTimes", "matmul_peak"]


class StageTimes:
    """Accumulated wall seconds and entry counts per named stage, in first-seen order."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds
        self._calls[name] = self._calls.get(name, 0) + calls

    def seconds(self, name: str) -> float:
        return self._seconds.get(name, 0.0)

    def calls(self, name: str) -> int:
        return self._calls.get(name, 0)

    def names(self) -> list[str]:
        return list(self._seconds)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {k: {"seconds": self._seconds[k], "calls": self._calls[k]} for k in self._seconds}

    def reset(self) -> None:
        self._seconds.clear()
        self._calls.clear()


def matmul_peak(dtype, device=None, *, budget_s: float = 1.0, max_n: int = 2048) -> dict:
    """Measured dense matmul throughput (GFLOP/s) of ``dtype`` on ``device``: square products
    of growing size until one takes a tenth of ``budget_s`` (or ``max_n`` is reached), then the
    best of a few repeats at that size. A dtype with no fast kernels here (bfloat16 on a CPU
    without bf16 matrix units) stops at a small size instead of taking minutes."""
    device = torch.device("cpu" if device is None else device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    n, best, size = 128, 0.0, 128
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up
        sync()
        dt = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            a @ b
            sync()
            dt = min(dt, time.perf_counter() - t0)
            if dt > budget_s / 10:
                break
        if 2 * n**3 / dt / 1e9 > best:
            best, size = 2 * n**3 / dt / 1e9, n
        if dt > budget_s / 10 or n >= max_n:
            break
        n *= 2
    return {"dtype": str(dtype).replace("torch.", ""), "n": size, "gflops": best}
