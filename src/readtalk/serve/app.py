"""The ``readtalk serve`` application: FastAPI routes over one ``Engine``.

Routes: ``GET /health``; ``GET /`` (the browser page); ``WS /v1/stream`` (readtalk.serve.stream);
``POST /v1/videos``, ``GET /v1/videos/{id}``, ``GET /v1/videos/{id}/video.mp4``
(readtalk.serve.jobs); ``POST /v1/webrtc/offer`` (readtalk.serve.webrtc). Everything but
``/health``, ``/`` and the page's static files needs the token when one is set
(``?token=`` or ``Authorization: Bearer``; compared in constant time; HTTP 401, or WebSocket
close code 4401).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from readtalk import __version__
from readtalk.errors import ReadtalkError
from readtalk.live import rss_mb
from readtalk.serve.engine import Busy, Engine
from readtalk.serve.jobs import Job, JobQueue, QueueFull
from readtalk.serve.stream import CLOSE_UNAUTHORIZED, error, serve_stream
from readtalk.serve.webrtc import WebRTC

STATIC = Path(__file__).parent / "static"
SETTING_FIELDS = ("seed", "steps", "guidance", "alpha", "beta", "gamma", "clip_frames",
                  "group_blend", "decode_context", "motion_latents", "schedule",
                  "context_latents", "motion_floor", "gate_db")  # fmt: skip

__all__ = ["create_app"]


def _token_ok(expected: str | None, query: str | None, header: str | None) -> bool:
    if expected is None:
        return True
    given = query
    if given is None and header and header.lower().startswith("bearer "):
        given = header[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


router = APIRouter()


def create_app(engine: Engine) -> FastAPI:
    """The server's application for an engine (the model loaded once, outside)."""
    cfg = engine.config

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with contextlib.ExitStack() as stack:
            root = cfg.jobs_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            app.state.jobs = JobQueue(engine, Path(root))
            app.state.jobs.start()
            app.state.webrtc = WebRTC(engine)
            try:
                yield
            finally:  # SIGTERM: no new work, cancel or finish what runs, no broken files
                await app.state.webrtc.close()
                n = await app.state.jobs.shutdown()
                print(f"readtalk serve: stopped ({n} job(s) cancelled)", file=sys.stderr)

    app = FastAPI(title="readtalk", version=__version__, lifespan=lifespan)
    app.state.engine = engine
    app.add_exception_handler(ReadtalkError, _bad_input)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _bad_input(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


def _engine(request: Request | WebSocket) -> Engine:
    return request.app.state.engine


def authorize(request: Request) -> Engine:
    """The engine, for a request that carries the token (when the server has one)."""
    engine = _engine(request)
    tok = request.query_params.get("token")
    if not _token_ok(engine.config.token, tok, request.headers.get("authorization")):
        raise HTTPException(401, "missing or wrong token", {"WWW-Authenticate": "Bearer"})
    return engine


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    engine = _engine(request)
    cfg = engine.config
    return {"status": "ok", "version": __version__, "size": engine.pipe.size,
            "sessions": engine.sessions, "max_sessions": cfg.max_sessions,
            "auth": cfg.token is not None, "rss_mb": round(rss_mb(), 1)}  # fmt: skip


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    await ws.accept()
    engine = _engine(ws)
    tok = ws.query_params.get("token")
    if not _token_ok(engine.config.token, tok, ws.headers.get("authorization")):
        await error(ws, "missing or wrong token")
        await ws.close(CLOSE_UNAUTHORIZED)
        return
    await serve_stream(ws, engine)


@router.post("/v1/videos")
async def submit(request: Request) -> JSONResponse:
    engine = authorize(request)
    cfg = engine.config
    size = request.headers.get("content-length")
    if size is None or not size.isdigit() or int(size) > cfg.max_upload_bytes:
        raise HTTPException(413, f"uploads must give a Content-Length of at most "
                                 f"{cfg.max_upload_bytes} bytes")  # fmt: skip
    jobs: JobQueue = request.app.state.jobs
    async with request.form(max_files=2, max_fields=len(SETTING_FIELDS) + 2,
                            max_part_size=cfg.max_upload_bytes) as form:  # fmt: skip
        audio_file, image_file = form.get("audio"), form.get("image")
        if not isinstance(audio_file, UploadFile):
            raise ReadtalkError("the request needs an 'audio' file")
        settings = engine.settings(_form_settings(form))
        image_data = await image_file.read() if isinstance(image_file, UploadFile) else None
        image = engine.portrait(image_data)
        with tempfile.NamedTemporaryFile(dir=jobs.root, suffix=_suffix(audio_file)) as tmp:
            tmp.write(await audio_file.read())
            tmp.flush()
            # decoding is light: a worker thread, not the model's compute thread
            audio = await asyncio.to_thread(jobs.read_audio, Path(tmp.name))
    warning = await asyncio.to_thread(engine.portrait_warning, image)  # one frame: not queued
    try:
        job = jobs.submit(image, audio, settings, warning)
    except QueueFull as e:
        raise HTTPException(503, str(e)) from None
    return JSONResponse(job.to_dict(), status_code=202)


def _job(request: Request, job_id: str) -> Job:
    authorize(request)
    job = request.app.state.jobs.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


@router.get("/v1/videos/{job_id}")
async def job_status(request: Request, job_id: str) -> dict[str, Any]:
    return _job(request, job_id).to_dict()


@router.get("/v1/videos/{job_id}/video.mp4")
async def job_video(request: Request, job_id: str) -> FileResponse:
    job = _job(request, job_id)
    if job.status != "done":
        raise HTTPException(409, f"job {job_id} is {job.status}")
    return FileResponse(job.video, media_type="video/mp4", filename=f"{job_id}.mp4")


@router.post("/v1/webrtc/offer")
async def webrtc_offer(request: Request) -> dict[str, Any]:
    engine = authorize(request)
    if int(request.headers.get("content-length") or 0) > engine.config.max_start_bytes:
        raise HTTPException(413, f"offers must be at most {engine.config.max_start_bytes} bytes")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReadtalkError("the offer must be JSON") from None
    try:
        return await request.app.state.webrtc.offer(body)
    except Busy as e:
        raise HTTPException(503, str(e)) from None


def _form_settings(form) -> dict[str, Any]:
    """Settings fields of a multipart form (JSON values: ``4``, ``true``, ``"split"`` or a
    bare word); other unknown text fields are errors."""
    out: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key in ("audio", "image"):
            continue
        if isinstance(value, UploadFile):
            raise ReadtalkError(f"unexpected file field {key!r} (audio, image)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _suffix(upload: UploadFile) -> str:
    name = upload.filename or ""
    return Path(name).suffix[:8] if "." in name else ".bin"
