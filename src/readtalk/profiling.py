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

import ast
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["HostWatch", "StageTimes", "matmul_peak"]


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


# ----------------------------------------------------------------------- the machine's stalls

# A separate process that sleeps 10 ms at a time and reports the gaps between its wake-ups
# beyond that: if it, too, could not run for a second while a session was late, the machine
# paused every process (memory reclaim, a hypervisor's steal), not the session's work.
_WATCHER = r"""
import sys, threading, time
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
tick, gaps, last = 0.01, [], time.perf_counter()
while not done.is_set():
    time.sleep(tick)
    now = time.perf_counter()
    if now - last - tick > 0.05:
        gaps.append((round(last, 4), round(now - last - tick, 4)))
    last = now
print(repr(gaps))
"""


def _proc_stat_steal_s() -> float | None:
    """Jiffies every CPU was stolen by the hypervisor since boot, in seconds (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _pressure_full_s(kind: str) -> float | None:
    """Linux PSI: seconds in which every task waited on ``kind`` ("memory", "io"), since boot."""
    try:
        with open(f"/proc/pressure/{kind}") as f:
            for line in f:
                if line.startswith("full"):
                    return int(line.split("total=")[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None
    return None


class HostWatch:
    """Measures how the machine itself stalled during a ``with`` block: ``report()`` gives
    ``host_stall_max_s`` (the longest a separate, idle process could not run, beyond its 10-ms
    sleep; None if it could not be started), ``host_stalls`` (how many such gaps over 0.05 s),
    ``host_stall_s`` (their total), ``host_stall_at_s`` (when the longest began, in seconds
    after ``report(origin)``, a ``time.perf_counter()`` reading; default the block's start),
    and, where Linux exposes them, ``cpu_steal_s`` (time the hypervisor ran something else) and
    ``memory_full_s`` / ``io_full_s`` (PSI: time every task waited on memory or I/O)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self.t0 = 0.0
        self._start: dict[str, float | None] = {}
        self.gaps: list[tuple[float, float]] = []

    def _counters(self) -> dict[str, float | None]:
        return {
            "cpu_steal_s": _proc_stat_steal_s(),
            "memory_full_s": _pressure_full_s("memory"),
            "io_full_s": _pressure_full_s("io"),
        }

    def __enter__(self) -> HostWatch:
        self._start = self._counters()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WATCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        except OSError:
            self._proc = None
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        try:
            out, _ = self._proc.communicate("", timeout=10)
            gaps = ast.literal_eval(out.strip() or "[]")
        except (subprocess.TimeoutExpired, ValueError, SyntaxError):
            self._proc.kill()
            gaps = None
        # (perf_counter readings: the same clock in both processes, CLOCK_MONOTONIC on Linux)
        self.gaps = gaps if gaps is not None else []
        if gaps is None:
            self._proc = None

    def report(self, origin: float | None = None) -> dict[str, float | int | None]:
        end = self._counters()
        out: dict[str, float | int | None] = {
            k: (None if v is None or self._start.get(k) is None else round(v - self._start[k], 3))
            for k, v in end.items()
        }
        if self._proc is None:
            return {**out, "host_stall_max_s": None, "host_stalls": None, "host_stall_s": None,
                    "host_stall_at_s": None}  # fmt: skip
        longest = max(self.gaps, key=lambda tg: tg[1], default=(None, 0.0))
        return {
            **out, "host_stall_max_s": round(longest[1], 3), "host_stalls": len(self.gaps),
            "host_stall_s": round(sum(g for _, g in self.gaps), 3),
            "host_stall_at_s": None
            if longest[0] is None
            else round(longest[0] - (self.t0 if origin is None else origin), 3),
        }  # fmt: skip
