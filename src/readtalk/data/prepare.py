"""``readtalk prepare``: a folder of ordinary talking videos -> a training dataset.

    readtalk prepare --videos raw/ --out data/real --size 512 --frames 121 --workers 2

Every video PyAV can read (any container, codec, frame rate and resolution) is resampled to
25 fps, its audio to 16 kHz mono; a face is detected every few frames and tracked in between
(``readtalk.data.faces``), and the footage is cut into clips of ``frames`` (8k+1) frames, each
a smoothed square crop around the face resized to ``size``. The output has SynthTalk's layout::

    video/<id>.mp4   H.264 + AAC, 25 fps, the clip's 16 kHz speech muxed
    audio/<id>.wav   the same speech, 16-bit PCM, exactly frames * 640 samples
    ref/<id>.png     the reference portrait: a crop from *another* part of the same video
    manifest.jsonl   id, split, identity, video, ref, audio, frames, size, duration,
                     source, start, end, ref_time, ref_from, identity_name (no ``track``:
                     real footage has no ground truth)
    rejected.jsonl   what was dropped and why (source, reason, detail, start, end)
    prepare.json     the summary; settings.json the settings; done/<video>.json per video

Identity: the first-level subfolder under ``--videos`` when a video sits in one (a folder per
person), otherwise the video itself. The split is by identity (``test_fraction`` of them).

Resumable: a video is finished when its ``done/`` marker exists (written after all its clips);
re-running skips finished videos and redoes the others. Every file is written under a staging
name and renamed into place, so a killed run never leaves a half-written clip under its final
name; the manifest lists only clips of finished videos. ``docs/prepare.md`` has the details.

Reading and analysing a video is in ``footage``, planning its clips in ``clips``, the settings
and the reasons for dropping footage in ``prepare_config``; writing and the run are here.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
import traceback
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from readtalk.data import faces as fc
from readtalk.data.clips import ClipPlan, plan_clips
from readtalk.data.footage import (
    SPF,
    VIDEO_SUFFIXES,
    Frames25,
    Source,
    aligned_audio,
    analyse,
    find_videos,
    open_info,
    voiced_frames,
)
from readtalk.data.prepare_config import REASONS, PrepareConfig, Rejected  # also importable here
from readtalk.errors import ReadtalkError
from readtalk.media import FPS, VideoWriter, save_wav, write_image

# ------------------------------------------------------------------------------------ writing


def write_clips(
    src: Source,
    plans: list[ClipPlan],
    audio: np.ndarray,
    out: Path,
    cfg: PrepareConfig,
    threads: int,
) -> list[dict]:
    """Pass 2: decode again and write each planned clip's mp4, wav and reference png."""
    F, S = cfg.frames, cfg.size
    ids = [f"{src.key}_{j:04d}" for j in range(len(plans))]
    by_start = {p.start: j for j, p in enumerate(plans)}
    refs: dict[int, list[int]] = {}
    for j, p in enumerate(plans):
        refs.setdefault(p.ref_frame, []).append(j)
    ref_img: dict[int, np.ndarray] = {}
    last = max(max(p.start + F for p in plans), max(refs) + 1)
    writer: VideoWriter | None = None
    j_open = -1
    try:
        for k, frame in enumerate(Frames25(src.path, threads)):
            if k >= last:
                break
            for j in refs.get(k, ()):
                ref_img[j] = fc.crop_frame(frame.rgb, plans[j].ref_box, S)
            if k in by_start:
                j_open = by_start[k]
                s = plans[j_open].start
                path = out / "video" / f"{ids[j_open]}.mp4"
                writer = VideoWriter(path, S, S, crf=cfg.crf, threads=threads)
                writer.add_audio(audio[s * SPF : (s + F) * SPF])
            if writer is not None:
                p = plans[j_open]
                writer.write(fc.crop_frame(frame.rgb, p.boxes[k - p.start], S))
                if writer.frames_written == F:
                    writer.close()
                    writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None or len(ref_img) < len(plans):  # the second decode came up short
        if writer is not None:
            writer.abort()
        raise Rejected("unreadable", "the video decoded to fewer frames the second time")
    records = []
    for j, p in enumerate(plans):
        save_wav(out / "audio" / f"{ids[j]}.wav", audio[p.start * SPF : (p.start + F) * SPF])
        write_image(out / "ref" / f"{ids[j]}.png", ref_img[j])
        records.append(
            {
                "id": ids[j],
                "video": f"video/{ids[j]}.mp4",
                "ref": f"ref/{ids[j]}.png",
                "audio": f"audio/{ids[j]}.wav",
                "frames": F,
                "size": S,
                "duration": F / FPS,
                "source": src.rel,
                "start": round(p.start / FPS, 3),
                "end": round((p.start + F) / FPS, 3),
                "ref_time": round(p.ref_frame / FPS, 3),
                "ref_from": p.ref_from,
                "identity_name": src.identity,
            }
        )
    return records


# ---------------------------------------------------------------------------------- one video


def _reject(src: Source, reason: str, detail: str, start=None, end=None) -> dict:
    return {
        "source": src.rel,
        "reason": reason,
        "detail": detail,
        "start": start,
        "end": end,
    }


def process_video(src: Source, out: Path, cfg: PrepareConfig, threads: int = 0) -> dict:
    """Turn one video into clips under ``out`` and return its result (clips, drops, seconds of
    footage); also writes the result as its ``done/`` marker, last."""
    t_start = time.perf_counter()
    stat = src.path.stat()
    res = {
        "source": src.rel,
        "identity": src.identity,
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "settings": cfg.settings(),
        "duration": 0.0,
        "clips": [],
        "rejected": [],
    }
    F = cfg.frames
    try:
        if stat.st_size == 0:
            raise Rejected("unreadable", "empty file")
        info = open_info(src.path)
        res["duration"] = round(info["duration"], 3)
        if 0 < info["duration"] * FPS < F - 1:
            raise Rejected("too_short", f"{info['duration']:.2f} s < {F / FPS:.2f} s")
        if not info["audio"]:
            raise Rejected("no_audio", "the file has no audio stream")
        an = analyse(src.path, cfg, threads)
        res["duration"] = round(an.n / FPS, 3)
        audio = aligned_audio(src.path, info, an.t0)
        n = min(an.n, len(audio) // SPF)
        if n < F:
            what = "video" if an.n < F else "audio"
            raise Rejected("too_short", f"{what}: {n / FPS:.2f} s < {F / FPS:.2f} s")
        voiced, loud = voiced_frames(audio, n)
        if loud < -50:
            raise Rejected("silent", f"95th-percentile level {loud:.0f} dBFS")
        if not any(an.detections.values()):
            raise Rejected("no_face", f"no face in {len(an.detections)} detections")
        plans, drops = plan_clips(an, voiced, cfg)
        res["rejected"] = [
            _reject(src, r, d, round(a / FPS, 3), round(b / FPS, 3)) for r, a, b, d in drops
        ]
        if plans:
            res["clips"] = write_clips(src, plans, audio, out, cfg, threads)
    except Rejected as e:
        res["clips"] = []
        res["rejected"] = [_reject(src, e.reason, e.detail)]
    res["seconds"] = round(time.perf_counter() - t_start, 2)
    _write_json(res, out / "done" / f"{src.key}.json")
    return res


def _job(args: tuple[Source, str, PrepareConfig, int, bool]) -> dict:
    src, out, cfg, threads, debug = args
    if threads == 1:
        cv2.setNumThreads(1)
    try:
        return process_video(src, Path(out), cfg, threads)
    except Exception as e:  # a bug: report it, write no marker (so the next run retries)
        detail = f"{type(e).__name__}: {e}"
        if debug:  # the trace, for a bug report
            detail += " [" + traceback.format_exc().strip().replace("\n", " | ") + "]"
        return {
            "source": src.rel,
            "identity": src.identity,
            "duration": 0.0,
            "clips": [],
            "rejected": [_reject(src, "error", detail)],
            "error": True,
        }


# ---------------------------------------------------------------------------- the whole run


def _write_json(obj, path: Path, lines: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if lines:
        tmp.write_text("".join(json.dumps(o) + "\n" for o in obj))
    else:
        tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _open_out(out: Path, cfg: PrepareConfig) -> None:
    settings = out / "settings.json"
    if settings.is_file():
        old = json.loads(settings.read_text())
        if old != cfg.settings():
            diff = sorted(k for k in {*old, *cfg.settings()} if old.get(k) != cfg.settings().get(k))
            raise ReadtalkError(
                f"{out} was prepared with other settings ({', '.join(diff)}); "
                "use the same settings to resume, or a new --out"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReadtalkError(f"output folder {out} exists, is not empty and is not a prepare run")
    for sub in ("video", "audio", "ref", "done"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if not settings.is_file():
        _write_json(cfg.settings(), settings)
    for sub in ("video", "audio", "ref", "done", "."):  # staging files of a killed run
        for p in (out / sub).glob(".*.partial-*"):
            p.unlink(missing_ok=True)


def _load_done(marker: Path, src: Source, cfg: PrepareConfig) -> dict | None:
    """A finished video's result, or None when it must be (re)done; stale clips are removed."""
    if not marker.is_file():
        return None
    try:
        res = json.loads(marker.read_text())
    except json.JSONDecodeError:
        res = {}
    stat = src.path.stat()
    if (
        res.get("bytes") == stat.st_size
        and res.get("mtime_ns") == stat.st_mtime_ns
        and res.get("settings") == cfg.settings()
    ):
        return res
    for rec in res.get("clips", []):  # the source changed: its old clips go
        for k in ("video", "audio", "ref"):
            (marker.parent.parent / rec[k]).unlink(missing_ok=True)
    marker.unlink()
    return None


def _splits(identities: list[str], test_fraction: float) -> set[str]:
    """Held-out identities: a stable hash order, so the choice does not depend on the order the
    videos were processed in (at least one each way when there are two or more)."""
    m = len(identities)
    n_test = 0 if m < 2 or test_fraction == 0 else min(m - 1, max(1, round(test_fraction * m)))
    order = sorted(identities, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    return set(order[:n_test])


def prepare(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: PrepareConfig | None = None,
    progress: bool = True,
    debug: bool = False,
) -> dict:
    """Turn every video under ``videos_dir`` into clips in ``out_dir`` (new, or an earlier run
    to resume) and return the summary (also written to ``out_dir/prepare.json``). A video that
    fails on an internal error is reported in one line (``debug``: with its trace)."""

    cfg = cfg or PrepareConfig()
    cfg.validate()
    videos_dir, out = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise ReadtalkError(f"videos folder not found: {videos_dir}")
    sources, ignored = find_videos(videos_dir)
    if not sources:
        raise ReadtalkError(
            f"no video files in {videos_dir} (looked for {', '.join(sorted(VIDEO_SUFFIXES))})"
        )
    _open_out(out, cfg)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    todo = []
    for src in sources:
        res = _load_done(out / "done" / f"{src.key}.json", src, cfg)
        if res is None:
            todo.append(src)
        else:
            results[src.rel] = res
    workers = max(1, min(cfg.workers or os.cpu_count() or 1, len(todo)))
    threads = 1 if workers > 1 else 0
    jobs = [(src, str(out), cfg, threads, debug) for src in todo]
    bar = tqdm(
        total=len(sources), initial=len(results), desc="prepare", unit="video", disable=not progress
    )
    clips = sum(len(r["clips"]) for r in results.values())

    def done(res: dict) -> None:
        nonlocal clips
        results[res["source"]] = res
        clips += len(res["clips"])
        bar.set_postfix(clips=clips)
        bar.update()

    if workers == 1:
        for job in jobs:
            done(_job(job))
    elif jobs:
        with mp.get_context("spawn").Pool(workers) as pool:
            for res in pool.imap_unordered(_job, jobs):
                done(res)
    bar.close()
    elapsed = time.perf_counter() - t0
    summary = _finish(out, sources, results, cfg, ignored)
    summary["videos_dir"] = str(videos_dir.resolve())
    processed = sum(results[s.rel]["duration"] for s in todo)
    summary.update(
        videos_processed=len(todo),
        videos_resumed=len(sources) - len(todo),
        workers=workers,
        seconds=round(elapsed, 2),
        realtime_factor=round(processed / elapsed, 3) if todo else None,
    )
    _write_json(summary, out / "prepare.json")
    return summary


def _finish(
    out: Path, sources: list[Source], results: dict[str, dict], cfg: PrepareConfig, ignored: int
) -> dict:
    """Write manifest.jsonl and rejected.jsonl from the per-video results; the summary."""
    ordered = [results[s.rel] for s in sources]
    with_clips = sorted({r["identity"] for r in ordered if r["clips"]})
    held_out = _splits(with_clips, cfg.test_fraction)
    index = {name: i for i, name in enumerate(with_clips)}
    manifest, rejected = [], []
    for r in ordered:
        for rec in r["clips"]:
            name = rec["identity_name"]
            manifest.append(
                {
                    "id": rec["id"],
                    "split": "test" if name in held_out else "train",
                    "identity": index[name],
                    **{k: v for k, v in rec.items() if k != "id"},
                }
            )
        rejected.extend(r["rejected"])
    _write_json(manifest, out / "manifest.jsonl", lines=True)
    _write_json(rejected, out / "rejected.jsonl", lines=True)
    videos, windows, hours = Counter(), Counter(), Counter()
    for rej in rejected:
        if rej["start"] is None:
            videos[rej["reason"]] += 1
            dur = results[rej["source"]]["duration"]
        else:
            windows[rej["reason"]] += 1
            dur = rej["end"] - rej["start"]
        hours[rej["reason"]] += dur / 3600
    hours_in = sum(r["duration"] for r in ordered) / 3600
    return {
        "dataset": "prepared",
        "config": asdict(cfg),
        "videos": len(sources),
        "videos_with_clips": sum(bool(r["clips"]) for r in ordered),
        "files_ignored": ignored,
        "clips": len(manifest),
        "train": sum(m["split"] == "train" for m in manifest),
        "test": sum(m["split"] == "test" for m in manifest),
        "identities": len(with_clips),
        "test_identities": sorted(held_out),
        "hours_in": round(hours_in, 4),
        "hours_out": round(len(manifest) * cfg.frames / FPS / 3600, 4),
        "dropped": {
            "videos": dict(videos),
            "windows": dict(windows),
            "hours": {k: round(v, 4) for k, v in hours.items()},
        },
        "errors": [rej["detail"] for rej in rejected if rej["reason"] == "error"],
    }


# ---------------------------------------------------------------------------------------- CLI


def format_summary(s: dict, out: str | os.PathLike) -> str:
    lines = [
        f"prepared {out}: {s['clips']} clips ({s['train']} train, {s['test']} test, "
        f"{s['identities']} identities) from {s['videos_with_clips']} of {s['videos']} videos; "
        f"{s['hours_in'] * 60:.1f} min of footage in, {s['hours_out'] * 60:.1f} min out",
    ]
    if s.get("videos_resumed"):
        lines.append(f"  {s['videos_resumed']} videos were already done (resumed)")
    if s.get("realtime_factor"):
        lines.append(
            f"  {s['seconds']:.1f} s for {s['videos_processed']} videos "
            f"({s['realtime_factor']:.2f}x real time, {s['workers']} workers)"
        )
    d = s["dropped"]
    for reason in REASONS:
        nv, nw = d["videos"].get(reason, 0), d["windows"].get(reason, 0)
        if nv or nw:
            lines.append(
                f"  dropped, {reason:<15} {nv:4d} videos {nw:5d} windows "
                f"{d['hours'].get(reason, 0) * 60:8.1f} min  ({REASONS[reason]})"
            )
    lines.extend(f"  error: {e}" for e in s["errors"][:5])
    return "\n".join(lines)
