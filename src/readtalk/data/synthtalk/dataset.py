"""SynthTalk: a talking-head dataset with exact ground truth, generated on the CPU.

``generate(SynthConfig(...), out)`` writes, for each clip, an H.264/AAC mp4 (25 fps, 16 kHz
mono speech), the reference portrait (a neutral, closed-mouth, frontal frame of that identity),
the speech as a 16-bit wav, and a ground-truth track (per-frame mouth parameters and their
pixel measures, head pose, blink, gaze, the timed phonemes, the text, the voice and the
identity). ``manifest.jsonl`` lists the clips with a train/test split **by identity**.

Every clip is a pure function of (seed, clip index): identities from (seed, identity index),
so results do not depend on the number of workers. Generation runs in a process pool and
writes into a staging folder that is renamed into place only when every clip is done; on any
error or interrupt the staging folder is removed, so nothing half-written is left behind.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from readtalk.data.synthtalk import tts
from readtalk.data.synthtalk.identity import Identity
from readtalk.data.synthtalk.identity import sample_identity as _sample_face
from readtalk.data.synthtalk.render import FaceRenderer, FrameState, mouth_measures
from readtalk.data.synthtalk.text import sentence
from readtalk.data.synthtalk.visemes import mouth_trajectory
from readtalk.errors import ReadtalkError
from readtalk.media import FPS, SAMPLE_RATE, VideoWriter, save_wav, write_image

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


@dataclass(frozen=True)
class SynthConfig:
    clips: int = 8
    size: int = 256
    frames: int = 121  # 8k+1 (a training clip); 121 frames = 4.84 s
    seed: int = 0
    identities: int = 0  # 0: one identity per 8 clips (at least 2)
    test_fraction: float = 0.1  # of identities
    workers: int = 0  # 0: all cores
    any_length: bool = False  # allow frame counts that are not 8k+1 (evaluation clips)
    crf: int = 18

    def validate(self) -> None:
        if self.clips <= 0:
            raise ReadtalkError(f"--clips must be positive, got {self.clips}")
        if self.size <= 0 or self.size % 32:
            raise ReadtalkError(f"--size must be a positive multiple of 32, got {self.size}")
        if self.size < 64:
            raise ReadtalkError(f"--size must be at least 64, got {self.size}")
        if self.frames <= 0:
            raise ReadtalkError(f"--frames must be positive, got {self.frames}")
        if not self.any_length and (self.frames - 1) % 8:
            k = (self.frames - 1) // 8
            raise ReadtalkError(
                f"--frames must be 8k+1 for training clips (e.g. {8 * k + 1} or {8 * k + 9}), "
                f"got {self.frames}; pass --any-length for evaluation clips"
            )
        if self.frames < 25:
            raise ReadtalkError(f"--frames must be at least 25 (1 s of speech), got {self.frames}")
        if self.identities < 0:
            raise ReadtalkError(f"--identities must be positive, got {self.identities}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ReadtalkError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.workers < 0:
            raise ReadtalkError(f"--workers must be >= 0, got {self.workers}")

    @property
    def n_identities(self) -> int:
        return self.identities or max(2, math.ceil(self.clips / 8))

    @property
    def duration(self) -> float:
        return self.frames / FPS


# ----------------------------------------------------------------------------- what gets drawn


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


@dataclass(frozen=True)
class Person:
    """A SynthTalk identity: a face and a voice."""

    index: int
    face: Identity
    voice: str
    pitch: int
    pitch_range: int
    base_rate: int
    mouth_gain: float  # how wide this person opens the mouth


def sample_person(seed: int, index: int) -> Person:
    rng = _rng(seed, 0, index)
    face = _sample_face(rng)
    return Person(
        index=index,
        face=face,
        voice=tts.VOICES[int(rng.integers(len(tts.VOICES)))],
        pitch=int(rng.integers(25, 75)),
        pitch_range=int(rng.integers(30, 80)),
        base_rate=int(rng.integers(145, 185)),
        mouth_gain=float(rng.uniform(0.85, 1.1)),
    )


def held_out_identities(cfg: SynthConfig) -> set[int]:
    """Identity indices held out for the test split (at least one each way when possible)."""
    m = cfg.n_identities
    n_test = 0 if m < 2 else min(m - 1, max(1, round(cfg.test_fraction * m)))
    if cfg.test_fraction == 0:
        n_test = 0
    return {int(i) for i in _rng(cfg.seed, 2).permutation(m)[:n_test]}


@dataclass
class SpeechTrack:
    audio: np.ndarray  # float32, exactly duration * SAMPLE_RATE samples
    phonemes: list[tuple[str, float, float, bool]]  # (symbol, start, end, stressed), non-pause
    text: str


def compose_speech(duration: float, person: Person, rng: np.random.Generator) -> SpeechTrack:
    """Fill ``duration`` seconds with sentences separated by pauses, starting after a short
    random lead-in; a sentence that would not fit is shortened (fewer words) until it does."""
    n = int(round(duration * SAMPLE_RATE))
    audio = np.zeros(n, np.float32)
    phonemes: list[tuple[str, float, float, bool]] = []
    texts: list[str] = []
    rate = int(np.clip(person.base_rate + rng.integers(-10, 11), 120, 220))
    voice = tts.Voice(person.voice, rate, person.pitch, person.pitch_range)
    cursor = float(rng.uniform(0.1, 0.5))
    while duration - cursor > 0.6:
        room = duration - cursor - 0.1
        text = sentence(rng)
        words = len(text.split())
        while True:
            sp = tts.synthesize(text, voice)
            t0, t1 = tts.speech_bounds(sp)
            if t1 - t0 <= room:
                break
            words -= 1
            if words == 0:
                break
            text = sentence(rng, max_words=words)
        if words == 0:
            break
        # paste the voiced part [t0, t1] (plus 30 ms of the synthesizer's own edges) at cursor
        a0, a1 = max(0.0, t0 - 0.03), min(sp.duration, t1 + 0.03)
        seg = sp.audio[int(a0 * SAMPLE_RATE) : int(a1 * SAMPLE_RATE)]
        start = int(round((cursor - (t0 - a0)) * SAMPLE_RATE))
        start = max(0, start)
        seg = seg[: n - start]
        audio[start : start + seg.size] += seg
        shift = start / SAMPLE_RATE - a0
        for ph in sp.phonemes:
            if ph.is_pause or ph.end <= a0 or ph.start >= a1:
                continue
            s, e = max(ph.start, a0) + shift, min(ph.end, a1) + shift
            if e > s and s < duration:
                phonemes.append((ph.symbol, s, min(e, duration), ph.stressed))
        texts.append(text)
        cursor += (t1 - t0) + float(rng.uniform(0.25, 0.9))
    if not texts:
        raise ReadtalkError(f"clip of {duration:.2f} s is too short for any speech")
    return SpeechTrack(np.clip(audio, -1, 1), phonemes, " ".join(texts))


def smooth_noise(
    rng: np.random.Generator,
    n: int,
    fps: float,
    std: float,
    fmin: float = 0.05,
    fmax: float = 0.5,
    parts: int = 3,
) -> np.ndarray:
    """A smooth random signal: a few sinusoids of random low frequency and phase, scaled to
    the given standard deviation (in expectation)."""
    t = np.arange(n) / fps
    x = np.zeros(n)
    for _ in range(parts):
        f = rng.uniform(fmin, fmax)
        x += rng.normal() * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
    return x * std * math.sqrt(2 / parts)


def frame_energy(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS of the audio over each frame's 40 ms."""
    a = audio[: n_frames * SAMPLES_PER_FRAME].reshape(n_frames, SAMPLES_PER_FRAME)
    return np.sqrt((a.astype(np.float64) ** 2).mean(axis=1))


def blink_track(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """Eyelid closure per frame: blinks every ~1.5-6 s, each 60 ms closing, 40 ms closed,
    120 ms opening, sampled at frame centres."""
    t = (np.arange(n) + 0.5) / fps
    out = np.zeros(n)
    tb = rng.uniform(0.2, 2.5)
    while tb < n / fps:
        rel = t - tb
        up = np.clip(rel / 0.06, 0, 1)
        down = np.clip(1 - (rel - 0.1) / 0.12, 0, 1)
        out = np.maximum(out, np.where(rel < 0, 0, np.minimum(up, down)))
        tb += max(1.5, rng.exponential(3.5))
    return out


def gaze_track(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixations with short saccades (smoothed over two frames)."""
    gx, gy = np.zeros(n), np.zeros(n)
    i = 0
    while i < n:
        length = int(rng.integers(12, 75))
        fx, fy = (
            (0.0, 0.0) if rng.uniform() < 0.5 else (rng.uniform(-0.8, 0.8), rng.uniform(-0.5, 0.5))
        )
        gx[i : i + length], gy[i : i + length] = fx, fy
        i += length
    k = np.array([0.25, 0.5, 0.25])
    return (
        np.convolve(np.pad(gx, 1, mode="edge"), k, "valid"),
        np.convolve(np.pad(gy, 1, mode="edge"), k, "valid"),
    )


def reference_state() -> FrameState:
    """The reference portrait: frontal, centred, mouth closed, eyes open, looking ahead."""
    return FrameState()


# ------------------------------------------------------------------------------------ one clip


def reference_portrait(seed: int, index: int, size: int) -> np.ndarray:
    """The reference portrait of SynthTalk identity ``index`` of a dataset made with ``seed``:
    uint8 (size, size, 3)."""
    return FaceRenderer(sample_person(seed, index).face, size).render(reference_state())


def _r(x: np.ndarray, nd: int = 5) -> list[float]:
    return [round(float(v), nd) for v in x]


def make_clip(cfg: SynthConfig, index: int, out: Path, split: str) -> dict:
    """Generate clip ``index`` into ``out`` and return its manifest record."""
    person = sample_person(cfg.seed, index % cfg.n_identities)
    rng = _rng(cfg.seed, 1, index)
    F, S = cfg.frames, cfg.size
    speech = compose_speech(cfg.duration, person, rng)
    mouth = mouth_trajectory(speech.phonemes, cfg.duration, FPS, gain=person.mouth_gain)
    energy = frame_energy(speech.audio, F)
    loud = np.convolve(energy / (energy.max() + 1e-8), np.ones(5) / 5, mode="same")
    pose = {
        "tx": smooth_noise(rng, F, FPS, 0.012),
        "ty": smooth_noise(rng, F, FPS, 0.01) + 0.006 * loud,  # a small nod with speech
        "tilt": smooth_noise(rng, F, FPS, 2.0),
        "scale": 1.0 + smooth_noise(rng, F, FPS, 0.015),
    }
    blink = blink_track(rng, F, FPS)
    gx, gy = gaze_track(rng, F)
    renderer = FaceRenderer(person.face, S)
    clip_id = f"{index:06d}"
    paths = {
        k: f"{k}/{clip_id}{ext}"
        for k, ext in (("video", ".mp4"), ("ref", ".png"), ("track", ".json"), ("audio", ".wav"))
    }
    gap, width = np.zeros(F), np.zeros(F)
    with VideoWriter(out / paths["video"], S, S, FPS, crf=cfg.crf, threads=1) as vw:
        vw.add_audio(speech.audio, SAMPLE_RATE)
        for i in range(F):
            st = FrameState(
                open=float(mouth[i, 0]),
                width=float(mouth[i, 1]),
                round=float(mouth[i, 2]),
                blink=float(blink[i]),
                gaze_x=float(gx[i]),
                gaze_y=float(gy[i]),
                tx=float(pose["tx"][i]),
                ty=float(pose["ty"][i]),
                tilt=float(pose["tilt"][i]),
                scale=float(pose["scale"][i]),
            )
            gap[i], width[i] = mouth_measures(person.face, st)
            vw.write(renderer.render(st))
    write_image(out / paths["ref"], renderer.render(reference_state()))
    save_wav(out / paths["audio"], speech.audio)
    track = {
        "id": clip_id,
        "fps": FPS,
        "frames": F,
        "size": S,
        "sample_rate": SAMPLE_RATE,
        "duration": cfg.duration,
        "text": speech.text,
        "voice": {"name": person.voice, "pitch": person.pitch, "range": person.pitch_range},
        "identity": person.index,
        "face": person.face.to_dict(),
        "mouth_gain": person.mouth_gain,
        "phonemes": [
            {"symbol": s, "start": round(a, 4), "end": round(b, 4), "stressed": st}
            for s, a, b, st in speech.phonemes
        ],
        "mouth": {"open": _r(mouth[:, 0]), "width": _r(mouth[:, 1]), "round": _r(mouth[:, 2])},
        "measures": {"gap": _r(gap, 6), "width": _r(width, 6)},
        "pose": {k: _r(v) for k, v in pose.items()},
        "blink": _r(blink, 4),
        "gaze": {"x": _r(gx, 4), "y": _r(gy, 4)},
        "energy": _r(energy, 6),
    }
    tmp = out / paths["track"]
    tmp.with_suffix(".tmp").write_text(json.dumps(track))
    os.replace(tmp.with_suffix(".tmp"), tmp)
    return {
        "id": clip_id,
        "split": split,
        "identity": person.index,
        **paths,
        "frames": F,
        "size": S,
        "duration": cfg.duration,
        "text": speech.text,
    }


def _worker(args: tuple[SynthConfig, int, str, str]) -> dict:
    cfg, index, out, split = args
    return make_clip(cfg, index, Path(out), split)


# ------------------------------------------------------------------------------ whole dataset


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReadtalkError(f"output folder {out} exists and is not empty; choose a new one")
    parent = out.parent if out.parent != Path("") else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as e:
            raise ReadtalkError(f"cannot create {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise ReadtalkError(f"cannot write to {parent}")


def generate(cfg: SynthConfig, out: str | os.PathLike, progress: bool = True) -> Path:
    """Write a SynthTalk dataset to ``out`` (a new or empty folder) and return its path."""
    cfg.validate()
    out = Path(out)
    _check_out(out)
    stage = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for sub in ("video", "ref", "track", "audio"):
            (stage / sub).mkdir(parents=True)
        held_out = held_out_identities(cfg)
        jobs = [
            (cfg, i, str(stage), "test" if i % cfg.n_identities in held_out else "train")
            for i in range(cfg.clips)
        ]
        workers = min(cfg.workers or os.cpu_count() or 1, cfg.clips)
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.clips, desc="synthtalk", unit="clip", disable=not progress)
        records: list[dict] = []
        if workers == 1:
            for job in jobs:
                records.append(_worker(job))
                bar.update()
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for rec in pool.imap_unordered(_worker, jobs):
                    records.append(rec)
                    bar.update()
        bar.close()
        elapsed = time.perf_counter() - t0
        records.sort(key=lambda r: r["id"])
        with open(stage / "manifest.jsonl", "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        summary = {
            "dataset": "synthtalk",
            "config": asdict(cfg),
            "clips": len(records),
            "train": sum(r["split"] == "train" for r in records),
            "test": sum(r["split"] == "test" for r in records),
            "identities": cfg.n_identities,
            "test_identities": sorted(held_out),
            "hours": round(len(records) * cfg.duration / 3600, 4),
            "seconds": round(elapsed, 2),
            "clips_per_second": round(len(records) / elapsed, 3),
            "workers": workers,
        }
        (stage / "synthtalk.json").write_text(json.dumps(summary, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out
