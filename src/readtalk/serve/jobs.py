"""``POST /v1/videos``: video jobs, queued (bounded), run one at a time on the compute
thread, independent of the client that posted them, and deleted ``job_ttl_s`` after they end.

A job's mp4 is written by ``Pipeline.generate_to_file``, which only renames a complete file
into place, so a job cancelled at shutdown (SIGTERM) leaves no broken file behind.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from readtalk.errors import ReadtalkError
from readtalk.media import SAMPLE_RATE, load_audio
from readtalk.serve.engine import Engine
from readtalk.settings import GenerationSettings

__all__ = ["Job", "JobQueue", "QueueFull"]

STATES = ("queued", "running", "done", "error")


class QueueFull(Exception):
    """``max_jobs`` jobs are queued or running (HTTP 503)."""


class Cancelled(Exception):
    """Raised inside a running job's progress callback to stop it."""


@dataclass
class Job:
    id: str
    folder: Path
    image: np.ndarray
    audio: np.ndarray
    settings: GenerationSettings
    status: str = "queued"
    progress: float = 0.0
    error: str | None = None
    warning: str | None = None  # the portrait is unlike the model's training faces
    created: float = field(default_factory=time.time)
    ended: float | None = None

    @property
    def video(self) -> Path:
        return self.folder / "video.mp4"

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "status": self.status, "progress": round(self.progress, 4),
               "seconds": round(len(self.audio) / SAMPLE_RATE, 3)}  # fmt: skip
        if self.error:
            out["error"] = self.error
        if self.warning:
            out["warning"] = self.warning
        return out


class JobQueue:
    """The video jobs of one server (module docstring)."""

    def __init__(self, engine: Engine, root: Path) -> None:
        self.engine = engine
        self.cfg = engine.config
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._janitor())]

    def read_audio(self, path: Path) -> np.ndarray:
        """An uploaded audio file -> 16 kHz mono, within the job length limit."""
        audio = load_audio(path)
        if len(audio) > self.cfg.max_audio_seconds * SAMPLE_RATE:
            raise ReadtalkError(
                f"audio is {len(audio) / SAMPLE_RATE:.1f} s; this server takes at most "
                f"{self.cfg.max_audio_seconds:g} s"
            )
        self.engine.pipe.prepare_audio(audio)  # long enough for one frame
        return audio

    def submit(
        self,
        image: np.ndarray,
        audio: np.ndarray,
        settings: GenerationSettings,
        warning: str | None = None,
    ) -> Job:
        if self._stopping:
            raise QueueFull("the server is shutting down")
        active = sum(j.status in ("queued", "running") for j in self.jobs.values())
        if active >= self.cfg.max_jobs:
            raise QueueFull(f"the server has {active} jobs waiting or running; try again later")
        jid = uuid.uuid4().hex
        job = Job(jid, self.root / jid, image, audio, settings, warning=warning)
        job.folder.mkdir()
        self.jobs[jid] = job
        self._queue.put_nowait(job)
        return job

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            if job.status != "queued":
                continue
            job.status = "running"
            try:
                await self.engine.run(self._generate, job)
                job.status, job.progress = "done", 1.0
            except Cancelled:
                job.status, job.error = "error", "cancelled: the server shut down"
            except ReadtalkError as e:
                job.status, job.error = "error", str(e)
            except Exception as e:  # a bug must not kill the worker: report it on the job
                job.status, job.error = "error", f"internal error: {type(e).__name__}: {e}"
            finally:
                job.ended = time.time()
                job.audio = np.zeros(0, np.float32)  # the job's memory back

    def _generate(self, job: Job) -> None:
        def progress(fraction: float) -> None:
            job.progress = fraction
            if self._stopping:
                raise Cancelled

        if self._stopping:
            raise Cancelled
        self.engine.pipe.generate_to_file(
            job.image, job.audio, job.video, job.settings, progress=False, on_progress=progress
        )

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.cfg.job_ttl_s / 2))
            self.expire()

    def expire(self, now: float | None = None) -> list[str]:
        """Delete jobs (and their files) that ended more than ``job_ttl_s`` ago."""
        now = time.time() if now is None else now
        old = [j for j in self.jobs.values() if j.ended and now - j.ended > self.cfg.job_ttl_s]
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)
            del self.jobs[job.id]
        return [j.id for j in old]

    async def shutdown(self, grace_s: float = 30.0) -> int:
        """Cancel queued jobs, stop the running one at its next step, wait for it; returns
        how many jobs were cancelled."""
        self._stopping = True
        active = [j for j in self.jobs.values() if j.status in ("queued", "running")]
        for job in active:
            if job.status == "queued":
                job.status, job.error, job.ended = "error", "cancelled: the server shut down", 0.0
        deadline = time.monotonic() + grace_s
        while any(j.status == "running" for j in active) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        return sum(j.status == "error" for j in active)
