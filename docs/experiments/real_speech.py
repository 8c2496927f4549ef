"""Lip sync on real human speech: the demo model driven by a real recording and by espeak-ng
speech, scored with a measure that needs no true mouth track, with SynthTalk truth on the same
measure as the reference (docs/results.md, "Real speech").

    OMP_NUM_THREADS=2 .venv/bin/python docs/experiments/real_speech.py --data data/st1000 \
        --generated results/runtime-parity/torch --out results/real-speech

What it does:

- drives the shipped demo model (``Pipeline.from_pretrained()``, ``--steps 4``, ``--seed 0``)
  with (a) ``--real``: pyannote-audio's ``sample.wav`` (30 s of real conversational English,
  two speakers, 16 kHz; read as a file, pyannote is not imported) and (b) ``--seconds`` of
  espeak-ng speech (``readtalk.live.speech_for``, SynthTalk sentences with pauses: the kind of
  speech the model was trained on), each with the same held-out portraits
  (``demo_portrait(256, seed)`` for ``--portraits``), and (c) the real speech raised to
  espeak-ng's level (``--match-level``, default on: is it the voice or the loudness?), with
  the model's noise gate or ``--gate-db`` (``speech.gate``; the scores use the speech as
  recorded); writes
  each video to ``OUT/videos`` (``--reuse`` scores the videos of an earlier run instead);
- reads the mouth of every decoded frame (``read_mouth``) and scores it against the video's
  own speech with ``readtalk.eval.lipsync.mouth_energy``: ``open_fraction`` (the mouth open on
  voiced frames) and ``energy_corr`` (mouth gap against speech energy, best lag within
  ``--max-lag`` frames);
- reference: the first ``--clips`` test clips of ``--data`` on the same measure, against each
  clip's own audio: the true lip gap of the clip's track, the mouth reader on the true videos,
  and (``--generated``: a folder of ``<id>.mp4`` the demo model made for those clips, e.g.
  ``docs/experiments/runtime_parity.py``'s torch videos at 4 steps) the generated videos;
- prints a markdown table and writes ``OUT/real_speech.json`` (per video and per row).

``r, 121-frame speech windows`` repeats ``energy_corr`` on the 121-frame windows of each video (the
length of a SynthTalk clip) in which at least half of the frames are voiced, and averages them.
The whole-video ``energy_corr`` also rewards a closed mouth during long silences (the real
recording opens with about 5 s of near-silence); the windows measure how the mouth follows
speech while there is speech, on the same footing as the 4.84-s SynthTalk clips.
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

from readtalk.data.manifest import load_manifest, load_track, resolve
from readtalk.data.synthtalk.mouth_reader import read_mouth
from readtalk.demo import demo_portrait
from readtalk.eval.lipsync import OPEN_GAP, VOICED_DB, frame_energy, mouth_energy
from readtalk.live import speech_for
from readtalk.media import SAMPLE_RATE, SAMPLES_PER_FRAME, load_audio, read_video
from readtalk.pipeline import Pipeline

PYANNOTE_SAMPLE = (
    Path(sysconfig.get_paths()["purelib"]) / "pyannote" / "audio" / "sample" / "sample.wav"
)
WINDOW = 121  # frames of a SynthTalk test clip


def reader_gap(frames: np.ndarray) -> np.ndarray:
    return np.array([read_mouth(f).gap for f in frames])


def score(gap: np.ndarray, audio: np.ndarray, max_lag: int) -> dict:
    """``mouth_energy`` of one video, its mean windowed correlation and how wide it opens."""
    m = mouth_energy(gap, audio, max_lag)
    wins = []
    for w0 in range(0, len(gap) - WINDOW + 1, WINDOW):
        if m.voiced[w0 : w0 + WINDOW].mean() < 0.5:  # mostly silence: nothing to follow
            continue
        piece = audio[w0 * SAMPLES_PER_FRAME : (w0 + WINDOW) * SAMPLES_PER_FRAME]
        wins.append(mouth_energy(gap[w0 : w0 + WINDOW], piece, max_lag).energy_corr)
    opened = gap[m.voiced & (gap > OPEN_GAP)]
    return {
        "frames": len(gap),
        "voiced": float(m.voiced.mean()),
        "open_fraction": m.open_fraction,
        "open_unvoiced": m.open_unvoiced,
        "energy_corr": m.energy_corr,
        "lag": m.lag,
        "corr_at_zero": m.corr_at_zero,
        "corr_windows": float(np.nanmean(wins)) if np.isfinite(wins).any() else float("nan"),
        "windows": len(wins),
        "gap_open_mean": float(opened.mean()) if opened.size else float("nan"),
        "loud_db": m.threshold_db + VOICED_DB,
        "note": m.reason,
    }


def summarise(videos: dict) -> dict:
    """A row: means over videos (lag: median), and the range of the two headline values."""
    rows = list(videos.values())
    out: dict = {"videos": len(rows), "frames": int(sum(r["frames"] for r in rows))}
    for key in ("voiced", "open_fraction", "open_unvoiced", "energy_corr", "corr_at_zero",
                "corr_windows", "gap_open_mean"):  # fmt: skip
        vals = [r[key] for r in rows if math.isfinite(r[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
        if key in ("open_fraction", "energy_corr", "corr_windows") and vals:
            out[f"{key}_range"] = [float(min(vals)), float(max(vals))]
    out["lag"] = float(np.median([r["lag"] for r in rows]))
    return out


def match_level(audio: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``audio`` scaled so that its loud frames (``frame_energy``'s 95th percentile) are as loud
    as ``like``'s, or as far as it goes without clipping (peak 0.99)."""
    loud = [np.percentile(frame_energy(x, len(x) // SAMPLES_PER_FRAME), 95) for x in (audio, like)]
    gain = min(10 ** ((loud[1] - loud[0]) / 20), 0.99 / max(np.abs(audio).max(), 1e-9))
    print(
        f"level match: {loud[0]:.1f} -> {loud[1]:.1f} dB wanted, gain {20 * np.log10(gain):.1f} dB"
    )
    return (audio * gain).astype(np.float32)


def generate_rows(a: argparse.Namespace, out: Path) -> tuple[dict, dict]:
    """The demo model on the real recording and on espeak-ng speech, per portrait."""
    pipe = Pipeline.from_pretrained(a.model)
    n = int(a.seconds * SAMPLE_RATE)
    speech = {
        "real": load_audio(a.real)[:n],
        "espeak": speech_for(a.seconds, seed=a.speech_seed),
    }
    if a.match_level:
        speech["real_loud"] = match_level(speech["real"], speech["espeak"])
    (out / "videos").mkdir(parents=True, exist_ok=True)
    videos: dict = {}
    for kind, audio in speech.items():
        videos[kind] = {}
        for p in a.portraits:
            t0 = time.perf_counter()
            path, timing = out / "videos" / f"{kind}_portrait{p}.mp4", {}
            if not (a.reuse and path.is_file()):
                image = demo_portrait(pipe.size, p)
                res = pipe(
                    image, audio, steps=a.steps, seed=a.seed, gate_db=a.gate_db, progress=False
                )
                res.save(path)
                timing = {"generation_s": res.seconds, "rtf": res.realtime_factor}
            row = score(reader_gap(read_video(path)), audio, a.max_lag)
            videos[kind][f"portrait{p}"] = row | timing | {"total_s": time.perf_counter() - t0}
            print(f"{kind} portrait {p}: open {row['open_fraction']:.3f}, "
                  f"r {row['energy_corr']:.3f} (lag {row['lag']})", flush=True)  # fmt: skip
    return videos, {k: len(v) / SAMPLE_RATE for k, v in speech.items()}


def reference_rows(a: argparse.Namespace) -> dict:
    """The first ``--clips`` SynthTalk test clips: true gap, reader on truth, generated."""
    records = load_manifest(a.data, "test")[: a.clips]
    rows: dict = {"truth_track": {}, "truth_reader": {}}
    gen = Path(a.generated) if a.generated else None
    if gen is not None:
        rows["generated"] = {}
    for rec in records:
        audio = load_audio(resolve(rec, "audio"))
        true_gap = np.asarray(load_track(rec)["measures"]["gap"], np.float64)
        rows["truth_track"][rec["id"]] = score(true_gap, audio, a.max_lag)
        truth = reader_gap(read_video(resolve(rec, "video")))
        rows["truth_reader"][rec["id"]] = score(truth, audio, a.max_lag)
        if gen is not None and (gen / f"{rec['id']}.mp4").is_file():
            g = reader_gap(read_video(gen / f"{rec['id']}.mp4"))
            rows["generated"][rec["id"]] = score(g, audio, a.max_lag)
    print(f"reference: {len(records)} test clips of {a.data}", flush=True)
    return rows


LABELS = {
    "truth_track": "SynthTalk truth: the true lip gap (track)",
    "truth_reader": "SynthTalk truth: mouth reader on the true videos",
    "generated": "demo model on the same SynthTalk clips (their espeak-ng speech)",
    "espeak": "demo model, espeak-ng speech",
    "real": "demo model, real speech (pyannote sample.wav)",
    "real_loud": "demo model, the same real speech raised to espeak-ng's level",
}


def _cell(row: dict, key: str) -> str:
    """Mean, and the range over videos for a row of a few 30-s videos."""
    lo_hi = row.get(f"{key}_range")
    spread = f" ({lo_hi[0]:.2f}–{lo_hi[1]:.2f})" if lo_hi and 1 < row["videos"] < 10 else ""
    return f"{row[key]:.3f}{spread}"


def table(rows: dict) -> str:
    head = (
        "| video | videos × s | voiced | `open_fraction` (voiced) | open (unvoiced) | "
        "`energy_corr` | lag | r at lag 0 | r, 121-frame speech windows | open gap |"
    )
    lines = [head, "|---" * 10 + "|"]
    for key, r in rows.items():
        secs = r["frames"] / r["videos"] / 25
        lines.append(
            f"| {LABELS[key]} | {r['videos']} × {secs:.1f} | {r['voiced']:.2f} | "
            f"{_cell(r, 'open_fraction')} | {r['open_unvoiced']:.3f} | "
            f"{_cell(r, 'energy_corr')} | {r['lag']:+.0f} | {r['corr_at_zero']:.3f} | "
            f"{_cell(r, 'corr_windows')} | {r['gap_open_mean']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the shipped demo)")
    p.add_argument("--real", default=str(PYANNOTE_SAMPLE), help="real speech (any audio file)")
    p.add_argument("--seconds", type=float, default=30.0, help="speech length of (a) and (b)")
    p.add_argument("--speech-seed", type=int, default=0, help="espeak-ng speech_for seed")
    p.add_argument("--portraits", default="0,1,2", help="demo_portrait seeds")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gate-db", type=float, default=None, help="noise gate (default: model's)")
    p.add_argument("--data", default="data/st1000", help="SynthTalk dataset (reference)")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--generated", default="", help="folder of the model's <id>.mp4 for --data")
    p.add_argument("--max-lag", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="score OUT/videos made by an earlier run")
    p.add_argument(
        "--match-level",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also drive the model with the real speech raised to espeak-ng's level",
    )
    p.add_argument("--out", required=True)
    a = p.parse_args()
    a.portraits = [int(x) for x in a.portraits.split(",") if x]
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    generated, seconds = generate_rows(a, out)
    per_video = {**reference_rows(a), **generated}
    rows = {k: summarise(v) for k, v in per_video.items() if v}
    settings = vars(a) | {"speech_seconds": seconds}
    res = {"settings": settings, "rows": rows, "videos": per_video}
    text = json.dumps(res, indent=1, default=float).replace("NaN", "null")
    (out / "real_speech.json").write_text(text + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
