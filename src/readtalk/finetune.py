"""``readtalk finetune``: a model folder fine-tuned on ONE person's ordinary videos.

    readtalk finetune --videos me/ --out runs/me [--from MODEL] [--minutes 60] [--resume]

Stages (docs/finetune.md), each a library call, each in its own folder under OUT and recorded
in ``finetune.json`` when finished (``resume`` skips those and resumes the interrupted one):
``prepare`` (``data/``: ``readtalk prepare`` at the base model's frame size; the last ~12 % of
the clips held out as the ``test`` split; footage without speech goes through copies with a
faint noise track, ``silent/``), ``before`` (the base model scored on the held-out clips),
``vae`` (``vae/``: the base VAE's frame decoder fine-tuned, encoder and latents kept, as the
recipe's ``decoder`` stage), ``cache`` (``cache/``: new VAE, base SpeechAE, the base DiT's
window and latent statistics), ``dit`` (``dit/``: the base DiT fine-tuned from its release),
``export`` (``model/``) and ``after`` (the new model scored like ``before``); ``report.json``.
Without speech the cache and DiT stages are skipped (the base DiT is exported).

Time budget (``minutes``, the whole run): prepare, cache, evaluations and export take what the
footage needs; the VAE gets ``VAE_SHARE`` of the time left when it starts (all of it without
speech), the DiT what is left after the cache, both keeping back the final evaluation's time
(the first one's) and ``EXPORT_RESERVE``. A training stage's step count is fixed once, from
the time of its first ``CALIBRATE`` steps (inside the warm-up, so the learning-rate schedule is
the one a known count gives), and stored: a resumed stage continues to the same count exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from readtalk.data.cache import CacheConfig, build_cache
from readtalk.data.footage import SPF, Frames25, find_videos, open_info
from readtalk.data.manifest import load_manifest, resolve
from readtalk.data.prepare import REASONS, PrepareConfig, prepare
from readtalk.data.prepare_config import Rejected
from readtalk.data.synthtalk.mouth_reader import read_mouth
from readtalk.dit.release import load_dit_release
from readtalk.errors import PortraitWarning, ReadtalkError
from readtalk.eval.suite import EvalConfig, Reference, score_video
from readtalk.export import export_model
from readtalk.media import FPS, VideoWriter, fit_size, read_video, to_tensor
from readtalk.pipeline import Pipeline
from readtalk.release import default_model_dir, peek_safetensors, read_model_folder
from readtalk.speech.speechae import load_speechae
from readtalk.train.dit import DiffusionConfig, DiTRunConfig, train_dit
from readtalk.train.optim import OptimConfig
from readtalk.train.vae import VAERunConfig, evaluate_videos, train_vae
from readtalk.vae.factorised import FACTORISED_FORMAT

CLIP_FRAMES = 121  # frames per prepared clip (the recipe's)
HOLD_OUT = 0.12  # the last fraction of the clips held out (at least one)
VAE_SHARE = 0.4  # of the time left when the VAE stage starts, with speech
CALIBRATE = 10  # steps timed before a stage's step count is fixed (within its warm-up)
WARMUP = 20
EXPORT_RESERVE = 20.0  # seconds kept back for the export
CHECKPOINT_SECONDS = 180.0  # about how often a training stage writes a checkpoint
EVAL_CLIPS = 8  # held-out clips the report scores
EVAL_WINDOW = 33  # frames the VAE reconstructs at a time in the report
BANK_FRAMES = 4000  # at most this many frames in the factorised VAE's frame bank
MAX_UPSCALE = 4.0  # prepare's 2.5 would drop a phone video's face at 256 px: it is all there is
NOISE_DBFS = -40.0  # level of the faint noise track given to footage without speech
NO_SPEECH = ("no_audio", "silent")
NO_SPEECH_NOTE = "no usable speech in the videos: only the VAE's frame decoder was fine-tuned"
SCHEDULE = ("prepare", "before", "vae", "cache", "dit", "export", "after")
STATE = "finetune.json"


# ------------------------------------------------------------------------------------ data


def hold_out(data: str | os.PathLike, fraction: float = HOLD_OUT) -> tuple[int, int]:
    """Rewrite ``data/manifest.jsonl`` (atomically) with its last ``fraction`` of clips (at least
    one, at most all but one) in the ``test`` split, the rest in ``train``; (train, test)."""
    path = Path(data) / "manifest.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    n = len(recs)
    if n < 2:
        raise ReadtalkError(
            f"only {n} clip of usable footage in {data}: need at least 2 (one is held out to "
            "measure the fine-tune); give more or longer videos"
        )
    k = min(n - 1, max(1, round(fraction * n)))
    for i, rec in enumerate(recs):
        rec["split"] = "test" if i >= n - k else "train"
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    os.replace(tmp, path)
    return n - k, k


def _rejections(data: Path) -> list[dict]:
    path = data / "rejected.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def no_clip_message(videos: Path, data: Path, rejected: list[dict]) -> str:
    """One line: why ``prepare`` made no clip of ``videos`` (its ``rejected`` reasons)."""
    count = Counter(r["reason"] for r in rejected)
    why = "; ".join(f"{n} x {k} ({REASONS.get(k, k)})" for k, n in count.most_common())
    return f"no usable clip in {videos}: {why or 'nothing was found'} (details in {data})"


def add_noise_track(src: Path, dst: Path) -> bool:
    """Copy a video without usable speech to ``dst`` (25 fps, even size) with a faint noise track
    (``NOISE_DBFS``, a second longer than the header says: prepare cuts it to the frames), so
    that ``prepare`` takes its footage; False when it cannot be decoded."""
    writer = None
    try:
        seconds = open_info(src)["duration"] or sum(1 for _ in Frames25(src)) / FPS
        noise = np.random.default_rng(0).standard_normal(int((seconds + 1) * FPS) * SPF)
        for frame in Frames25(src):
            img = frame.rgb[: frame.height // 2 * 2, : frame.width // 2 * 2]
            if writer is None:
                writer = VideoWriter(dst, img.shape[1], img.shape[0], crf=12)
                writer.add_audio((noise * 10 ** (NOISE_DBFS / 20)).astype(np.float32))
            writer.write(np.ascontiguousarray(img))
    except (Rejected, ReadtalkError):
        if writer is not None:
            writer.abort()
        return False
    if writer is not None:
        writer.close()
    return writer is not None


def _silent_copies(videos: Path, data: Path, dst: Path) -> int:
    """Noise-track copies of the videos ``prepare`` dropped for want of speech, written to a
    staging folder renamed to ``dst`` when complete; the number copied."""
    dropped = {r["source"] for r in _rejections(data) if r["reason"] in NO_SPEECH}
    staging = dst.with_name(dst.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    n = 0
    for src in find_videos(videos)[0]:
        if src.rel in dropped:
            target = staging / Path(src.rel).with_suffix(".mp4")
            target.parent.mkdir(parents=True, exist_ok=True)
            n += add_noise_track(src.path, target)
    if n:
        shutil.rmtree(data)  # the first try made no clip; the silent copies are prepared anew
        staging.rename(dst)
    return n


def prepare_person(
    videos: Path, out: Path, size: int, frames: int, workers: int, progress: bool
) -> dict:
    """Stage 1: ``out/data`` from ``videos`` (footage without speech through ``out/silent``),
    its last clips held out. A one-line error when no clip comes out."""
    data, silent = out / "data", out / "silent"
    cfg = PrepareConfig(size, frames, workers, max_upscale=MAX_UPSCALE, test_fraction=0.0)
    speech, other = not silent.is_dir(), []
    if speech:
        s = prepare(videos, data, cfg, progress)
        first = _rejections(data)
        other = [r for r in first if r["reason"] not in NO_SPEECH]  # kept for the message
        wanted = len(other) < len(first)
        if s["clips"] == 0 and wanted and _silent_copies(videos, data, silent):
            speech = False
    if not speech:
        s = prepare(silent, data, dataclasses.replace(cfg, min_speech=0.0), progress)
    if s["clips"] == 0:
        seen = other + _rejections(data) if not speech else _rejections(data)
        raise ReadtalkError(no_clip_message(videos, data, seen))
    train, test = hold_out(data)
    return {
        "speech": speech,
        "clips": s["clips"],
        "train": train,
        "test": test,
        "footage_minutes": round(s["hours_out"] * 60, 2),
        "videos": s["videos"],
        "videos_with_clips": s["videos_with_clips"],
        "dropped": s["dropped"]["videos"],
    }


# ------------------------------------------------------------------------------ evaluation


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _mean(values: list) -> float | None:
    vals = [v for v in values if _finite(v)]
    return float(np.mean(vals)) if vals else None


def mouth_scores(pipe: Pipeline, recs: list[dict], truth: dict, progress: bool) -> dict:
    """Lip sync on held-out clips, as ``readtalk eval`` scores it (``score_video``): each clip
    generated from its reference portrait and speech, the mouth reader's gap on the generated
    frames against its gap on the true frames (``mouth_corr``, the mean over clips whose
    generated mouth moves; ``mouth_corr_all`` counts still mouths as 0)."""
    gaps = {r["id"]: np.array([read_mouth(f).gap for f in truth[r["id"]]]) for r in recs}
    moving = [r for r in recs if np.ptp(gaps[r["id"]]) > 0]
    if not moving:
        return {
            "mouth_corr": None,
            "mouth_note": "the mouth reader sees no moving mouth in the held-out footage (it "
            "reads SynthTalk-style drawn mouths, not photographs)",
        }
    st = pipe.settings()
    cfg = EvalConfig(clip_frames=st.clip_frames, motion_latents=st.motion_latents)
    rows = []
    for rec in tqdm(moving, desc="lip sync", unit="clip", disable=not progress):
        with warnings.catch_warnings():  # the base model is expected not to know this face
            warnings.simplefilter("ignore", PortraitWarning)
            frames = pipe(resolve(rec, "ref"), resolve(rec, "audio"), seed=0, progress=False).frames
        ref = Reference(rec["id"], None, None, None, gaps[rec["id"]], False)
        rows.append(score_video(frames, None, ref, cfg, gt=truth[rec["id"]])[0])
    scored = [r["mouth_corr"] for r in rows if _finite(r.get("mouth_corr"))]
    still = sum(bool(r.get("mouth_still")) for r in rows)
    return {
        "mouth_note": "the mouth reader is made for SynthTalk's drawn mouths; on photographs "
        "its lip gap is a rough proxy",
        "mouth_corr": _mean(scored),
        "mouth_corr_all": float(sum(scored) / (len(scored) + still)) if scored or still else None,
        "mouth_still": still,
        "mouth_clips": len(rows),
        "generated_psnr": _mean([r.get("psnr") for r in rows]),
    }


def evaluate_person(
    pipe: Pipeline, data: Path, speech: bool, clips: int = EVAL_CLIPS, progress: bool = True
) -> dict:
    """The report's scores of a model on the first ``clips`` held-out clips of ``data``: its
    VAE's reconstruction PSNR / SSIM over their frames (windows of ``EVAL_WINDOW``), and, with
    speech, ``mouth_scores``."""
    recs = load_manifest(data, "test")[:clips]
    truth = {r["id"]: fit_size(read_video(resolve(r, "video")), pipe.size) for r in recs}
    w = min(EVAL_WINDOW, min(len(v) for v in truth.values()))
    w = (w - 1) // 8 * 8 + 1
    psnr, ssim, frames = [], [], 0
    for video in tqdm(truth.values(), desc="vae eval", unit="clip", disable=not progress):
        starts = range(0, len(video) - w + 1, w)
        wins = [to_tensor(np.ascontiguousarray(video[a : a + w])).to(pipe.dtype) for a in starts]
        res = evaluate_videos(pipe.vae, [x.to(pipe.device) for x in wins])
        psnr += [res["psnr"]] * len(wins)
        ssim += [res["ssim"]] * len(wins)
        frames += w * len(wins)
    out = {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "frames": frames}
    out.update(clips=len(recs))
    if speech:
        out.update(mouth_scores(pipe, recs, truth, progress))
    else:
        out.update(mouth_corr=None, mouth_note="no speech in the footage")
    return out


# -------------------------------------------------------------------------------- training


def step_seconds(metrics: Path, upto: int) -> float:
    """Seconds per training step from a run's ``metrics.jsonl`` logged at every step: the
    median over steps 2..``upto`` (step 1 holds one-time work such as a frame bank)."""
    by_step = {}
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        rec = json.loads(line) if line.strip() else {}
        if rec.get("steps_per_s"):
            by_step[rec["step"]] = 1.0 / rec["steps_per_s"]
    times = [by_step[s] for s in range(2, upto + 1) if s in by_step] or list(by_step.values())
    if not times:
        raise ReadtalkError(f"{metrics}: no step times logged")
    return float(np.median(times))


def run_stage(train_fn: Callable, cfg, run: Path, progress: bool, stop_at: int | None = None):
    """``train_fn`` (train_vae / train_dit) in ``run``: resumed from its last checkpoint when it
    has one, started afresh otherwise (a folder without a checkpoint holds no training)."""
    resume = any((run / "checkpoints").glob("step_*.pt"))
    if not resume and run.exists():
        shutil.rmtree(run)
    return train_fn(cfg, run, resume=resume, progress=progress, stop_at=stop_at)


def _optim(steps: int, ckpt: int, log: int, threads: int, **kw) -> OptimConfig:
    return OptimConfig(
        steps=steps, warmup=WARMUP, eval_every=steps, ckpt_every=ckpt, log_every=log,
        threads=threads, **kw,
    )  # fmt: skip


def vae_config(base_vae: Path, data: Path, train_clips: int, frames: int, threads: int):
    """``make(steps, ckpt, log)`` -> the frame-decoder stage's ``VAERunConfig`` (the recipe's
    ``decoder`` stage at mouth weight 10): single frames from a frame bank for a factorised VAE,
    9-frame windows for a plain video VAE (its decoder is temporal)."""
    factorised = peek_safetensors(base_vae)[1].get("format") == FACTORISED_FORMAT
    bank = max(2, min(16, BANK_FRAMES // max(train_clips, 1))) if factorised else 0
    common = {
        "data": str(data), "init": str(base_vae), "train_encoder": False,
        "clip_frames": 1 if factorised else 9, "frame_bank": bank, "mouth_weight": 10.0,
        "eval_clips": 4, "eval_frames": min(33, (frames - 1) // 8 * 8 + 1),
    }  # fmt: skip
    batch = 16 if factorised else 2

    def make(steps: int, ckpt: int, log: int) -> VAERunConfig:
        optim = _optim(steps, ckpt, log, threads, batch_size=batch, lr=3e-4)
        return VAERunConfig(**common, train=optim)

    return make


def base_diffusion(release) -> DiffusionConfig:
    """The base DiT's training diffusion settings (older releases name two of them as the
    pipeline does: ``steps``, ``motion_latents``)."""
    d = dict(release.diffusion)
    d.setdefault("sample_steps", d.get("steps", DiffusionConfig.sample_steps))
    d.setdefault("motion_frames", d.get("motion_latents", DiffusionConfig.motion_frames))
    known = {f.name for f in dataclasses.fields(DiffusionConfig)}
    return DiffusionConfig(**{k: v for k, v in d.items() if k in known})


def dit_config(base_dit: Path, cache: Path, threads: int):
    """``make(steps, ckpt, log)`` -> the DiT stage's ``DiTRunConfig``: the base DiT's size and
    diffusion settings, initialised from it, a fifth of the recipe's learning rate."""
    rel = load_dit_release(base_dit)
    size, diffusion = rel.model.cfg.name, base_diffusion(rel)

    def make(steps: int, ckpt: int, log: int) -> DiTRunConfig:
        return DiTRunConfig(
            cache=str(cache), size=size, init=str(base_dit), diffusion=diffusion, samples=0,
            eval_windows=16, train=_optim(steps, ckpt, log, threads, batch_size=8, lr=1e-4,
                                          weight_decay=0.0),
        )  # fmt: skip

    return make


def use_base_statistics(cache: Path, base_dit: Path) -> None:
    """Give the cache the base DiT's latent statistics (the fine-tune keeps the normalisation
    the base DiT learned; the encoder, and so the latents, are the base's)."""
    rel = load_dit_release(base_dit)
    if rel.latent_mean is None or rel.latent_std is None:
        return
    path = cache / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(
        latent_mean=rel.latent_mean.tolist(),
        latent_std=rel.latent_std.tolist(),
        latent_stats_from=str(base_dit),
    )
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- the run


class _Run:
    """One fine-tune: its folder, its state (``finetune.json``: settings, finished stages with
    their results and seconds, fixed step counts) and the time budget."""

    def __init__(self, out: Path, settings: dict, resume: bool, budget_s: float) -> None:
        self.out, self.path, self.budget_s = out, out / STATE, budget_s
        if self.path.is_file() and resume:
            self.state = json.loads(self.path.read_text())
            old = self.state["settings"]
            diff = [f"{k}: {old.get(k)!r} != {v!r}" for k, v in settings.items() if old.get(k) != v]
            if diff:
                raise ReadtalkError(
                    f"{out} was started with other settings ({', '.join(diff)}); use the same "
                    "ones to resume, or a new --out"
                )
        elif out.exists() and (not out.is_dir() or any(out.iterdir())):
            hint = (
                "pass --resume to continue it" if self.path.is_file() else "it is not a fine-tune"
            )
            raise ReadtalkError(f"output folder {out} is not empty ({hint}), or choose a new --out")
        else:
            self.state = {"settings": settings, "stages": {}, "steps": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        os.replace(tmp, self.path)

    def stage(self, name: str, fn: Callable[[], dict]) -> dict:
        """A finished stage's stored result, or ``fn()``'s, stored with its seconds."""
        if name in self.state["stages"]:
            return self.state["stages"][name]
        t0 = time.perf_counter()
        res = fn()
        res["seconds"] = round(time.perf_counter() - t0, 2)
        self.state["stages"][name] = res
        self.save()
        return res

    def left(self) -> float:
        """Seconds of the budget left for training: less what the finished stages took, the
        final evaluation (as long as the first) and the export."""
        used = sum(s["seconds"] for s in self.state["stages"].values())
        final = self.state["stages"].get("before", {}).get("seconds", 0.0)
        return self.budget_s - used - final - EXPORT_RESERVE

    def train(self, name: str, train_fn, make, budget_s: float, progress: bool, steps=None):
        """Train stage ``name`` to a step count: ``steps`` if given, else the one stored, else
        fixed now from the first ``CALIBRATE`` steps' time and ``budget_s``."""
        run = self.out / name
        fixed = steps or self.state["steps"].get(name)
        if fixed is None:
            t0 = time.perf_counter()
            cap = 10**7  # the schedule of the first CALIBRATE steps is the warm-up's alone
            run_stage(train_fn, make(cap, CALIBRATE, 1), run, progress, stop_at=CALIBRATE)
            per = step_seconds(run / "metrics.jsonl", CALIBRATE)
            took = time.perf_counter() - t0  # its set-up (data, frame bank) comes again
            spare = budget_s - took - max(0.0, took - CALIBRATE * per)
            fixed = CALIBRATE + max(0, int(0.95 * spare / per))
            self.state["steps"][name] = fixed
            self.state.setdefault("step_seconds", {})[name] = round(per, 4)
            self.save()
        per = self.state.get("step_seconds", {}).get(name)
        ckpt = max(1, round(CHECKPOINT_SECONDS / per) if per else fixed // 10)
        release = run_stage(train_fn, make(fixed, ckpt, min(20, fixed)), run, progress)
        return {"steps": fixed, "release": str(release), "budget_minutes": round(budget_s / 60, 2)}


def _base_parts(base: Path) -> tuple[dict[str, Path], dict]:
    """The base model folder's weights files and its pipeline.json defaults (without the
    portrait statistics, which the export measures again on the new faces)."""
    files, defaults = read_model_folder(base)
    return files, {k: v for k, v in defaults.items() if k != "portrait"}


def _check(minutes: float, frames: int, window: int, steps: dict | None) -> None:
    if not minutes > 0:
        raise ReadtalkError(f"--minutes must be positive, got {minutes}")
    if frames < window or (frames - 1) % 8:
        raise ReadtalkError(
            f"clips must be 8k+1 frames and at least the base DiT's {window}-frame window, "
            f"got {frames}"
        )
    bad = sorted(set(steps or {}) - {"vae", "dit"})
    if bad or any(int(v) < 1 for v in (steps or {}).values()):
        raise ReadtalkError(f"steps must map 'vae' / 'dit' to positive counts, got {steps}")


def finetune(
    videos: str | os.PathLike,
    out: str | os.PathLike,
    base: str | os.PathLike | None = None,
    minutes: float = 60.0,
    resume: bool = False,
    progress: bool = True,
    *,
    steps: dict[str, int] | None = None,
    frames: int = CLIP_FRAMES,
    threads: int = 0,
) -> dict:
    """Fine-tune ``base`` (a model folder; default the shipped demo model) on one person's
    ``videos`` into ``out`` (module docstring) within about ``minutes``; returns the report
    (also ``out/report.json``; ``format_report`` prints it). ``steps`` ({"vae": n, "dit": n})
    fixes a stage's step count instead of the budget; ``resume`` continues ``out``."""
    videos, out = Path(videos), Path(out)
    base = Path(base) if base is not None else default_model_dir()
    if not videos.is_dir():
        raise ReadtalkError(f"videos folder not found: {videos}")
    if threads:
        torch.set_num_threads(threads)
    files, defaults = _base_parts(base)
    before_pipe = Pipeline.from_pretrained(base)
    window = int(load_dit_release(files["dit"]).diffusion.get("clip_frames") or 0)
    window = window or before_pipe.settings().clip_frames
    _check(minutes, frames, window, steps)
    settings = {"videos": str(videos.resolve()), "base": str(base.resolve()), "frames": frames}
    run = _Run(out, settings, resume, minutes * 60)
    steps = steps or {}
    data = out / "data"
    prep = run.stage(
        "prepare",
        lambda: prepare_person(videos, out, before_pipe.size, frames, threads, progress),
    )
    speech = prep["speech"]
    run.stage("before", lambda: evaluate_person(before_pipe, data, speech, progress=progress))
    share = VAE_SHARE if speech else 1.0
    make_vae = vae_config(files["vae"], data, prep["train"], frames, threads)
    run.stage(
        "vae",
        lambda: run.train(
            "vae", train_vae, make_vae, share * run.left(), progress, steps.get("vae")
        ),
    )
    vae = out / "vae" / "vae.safetensors"
    dit = files["dit"]
    if speech:
        run.stage("cache", lambda: _cache(data, vae, files, window, out / "cache", progress))
        make_dit = dit_config(files["dit"], out / "cache", threads)
        run.stage(
            "dit",
            lambda: run.train("dit", train_dit, make_dit, run.left(), progress, steps.get("dit")),
        )
        dit = out / "dit" / "dit.safetensors"
    run.stage("export", lambda: _export(out / "model", vae, files, dit, defaults, data))
    run.stage(
        "after",
        lambda: evaluate_person(
            Pipeline.from_pretrained(out / "model"), data, speech, progress=progress
        ),
    )
    report = make_report(run.state, out, minutes)
    tmp = out / f".report.json.partial-{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "report.json")
    return report


def _cache(data: Path, vae: Path, files: dict, window: int, cache: Path, progress: bool) -> dict:
    """Stage 4: the latent cache (new VAE, base SpeechAE), with the base DiT's statistics."""
    kind = load_speechae(files["speechae"]).cfg.front_end
    cfg = CacheConfig(
        data=str(data), vae=str(vae), speech=str(files["speechae"]), frames=window,
        front_end="logmel" if kind == "logmel" else "whisper",
    )  # fmt: skip
    meta = json.loads(build_cache(cfg, cache, progress=progress).read_text())
    use_base_statistics(cache, files["dit"])
    return {"windows": meta["windows"], "frames": window}


def _export(model: Path, vae: Path, files: dict, dit: Path, defaults: dict, data: Path) -> dict:
    res = export_model(
        model, vae, files["speechae"], dit, defaults=defaults or None, portraits=data
    )
    return {"path": str(model), "megabytes": round(res["total_bytes"] / 1e6, 2)}


# ---------------------------------------------------------------------------------- report


def make_report(state: dict, out: Path, minutes: float) -> dict:
    """``report.json``: before / after scores on the held-out clips, steps, minutes per stage."""
    st = state["stages"]
    prep, before, after = st["prepare"], st["before"], st["after"]
    speech = prep["speech"]
    note = "VAE frame decoder and DiT fine-tuned" if speech else NO_SPEECH_NOTE
    minutes_by = {k: round(st[k]["seconds"] / 60, 2) for k in SCHEDULE if k in st}
    minutes_by["total"] = round(sum(minutes_by.values()), 2)
    keys = ("psnr", "ssim", "mouth_corr", "mouth_corr_all", "mouth_still", "generated_psnr")
    return {
        "model": str(out / "model"),
        "base": state["settings"]["base"],
        "videos": state["settings"]["videos"],
        "speech": speech,
        "note": note,
        "clips": {k: prep[k] for k in ("train", "test")},
        "footage_minutes": prep["footage_minutes"],
        "held_out": {"clips": before["clips"], "frames": before["frames"]},
        **{k: {"before": before.get(k), "after": after.get(k)} for k in keys if k in before},
        "mouth_note": after.get("mouth_note"),
        "steps": {k: st[k]["steps"] for k in ("vae", "dit") if k in st},
        "minutes": minutes_by,
        "budget_minutes": minutes,
    }


def _num(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def format_report(r: dict) -> str:
    """The report in a few lines."""
    c = r["clips"]
    lines = [
        f"fine-tuned model: {r['model']} ({r['note']})",
        f"  footage: {r['footage_minutes']:.1f} min in {c['train'] + c['test']} clips; "
        f"{c['test']} held out (the last), {r['held_out']['frames']} frames scored",
        f"  VAE reconstruction PSNR {_num(r['psnr']['before'], '.2f')} -> "
        f"{_num(r['psnr']['after'], '.2f')} dB, SSIM {_num(r['ssim']['before'], '.3f')} -> "
        f"{_num(r['ssim']['after'], '.3f')} (base -> fine-tuned)",
    ]
    m = r["mouth_corr"]
    if m["before"] is not None or m["after"] is not None:
        lines.append(
            f"  lip sync mouth_corr {_num(m['before'], '.3f')} -> {_num(m['after'], '.3f')}"
        )
    else:
        lines.append(f"  lip sync mouth_corr: not measured ({r['mouth_note']})")
    steps = ", ".join(f"{k} {v}" for k, v in r["steps"].items())
    mins = ", ".join(f"{k} {v:.1f}" for k, v in r["minutes"].items() if k != "total")
    lines.append(f"  steps: {steps}; minutes: {mins}; total {r['minutes']['total']:.1f} "
                 f"of {r['budget_minutes']:g} budgeted")  # fmt: skip
    return "\n".join(lines)
