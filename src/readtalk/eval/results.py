"""``readtalk bench results``: READ's tables, measured on a dataset's held-out split.

    readtalk bench results --model DIR --data data/st1000 --out results/ \\
        [--long data/long] [--ablation name=DIR ...] [--syncnet W] [--inception W] [--i3d W]

One command generates every video it scores (from each test clip's reference portrait and
speech), evaluates them with ``readtalk eval`` and writes ``results.json``, ``results.md`` (the
tables) and plots into ``--out``:

1. **main**: the model with Split-CFG at ``main_steps`` (READ's 8) sampling steps on ``--clips``
   test clips: every metric that applies, and the runtime per 121-frame clip (generation wall
   time, whole pipeline: speech features, DiT, VAE decode, mp4 writing).
2. **steps x guidance**: 4, 6, 8, 10 steps with Split- and Joint-CFG on the first
   ``--grid-clips`` clips: lip sync and identity against runtime.
3. **ANS**: with ``--long`` (a dataset of long clips, e.g. ``readtalk synth --frames 1501
   --any-length``), every way of chaining clips, each row changing one thing from the default:
   ANS (motion re-encoded from the previous clip's frames, later clips decoded after the
   previous clip's latents), the same with every clip decoded on its own, ANS reusing the
   previous clip's latents as motion, and plain chunking with and without decoder context;
   seam ratio and the spread of lip sync over 121-frame windows.
4. **ablations**: every ``--ablation name=DIR`` model folder (e.g. a DiT trained without the
   pre-trained SpeechAE, or on raw features) scored like the main model.

The command is resumable: ``results.json`` is rewritten after every scored set (one table row)
together with a fingerprint of what the row depends on (SHA-256 of the model files and the
datasets' manifests, and the settings). Run again into the same ``--out``, it keeps the rows whose
fingerprint still matches and computes only the rest, so an interrupted run, or one more
``--ablation`` on a finished run, costs only the missing rows. ``--tables`` picks the tables to
compute (default: all that the given data allows).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from readtalk.data.cache import file_sha256
from readtalk.data.manifest import load_manifest, resolve
from readtalk.errors import ReadtalkError
from readtalk.eval.suite import EvalConfig, evaluate, save_figure
from readtalk.pipeline import Pipeline
from readtalk.release import model_files

TABLES = ("main", "grid", "ans", "ablations")
ANS_MODES = {  # name -> generation settings; each row changes one thing from the default
    "ans": {"ans": True, "motion_from": "frames"},
    "ans_no_context": {"ans": True, "motion_from": "frames", "decode_context": 0},
    "ans_latents": {"ans": True, "motion_from": "latents"},
    "plain": {"ans": False},
    "plain_no_context": {"ans": False, "decode_context": 0},
}
ROW_KEYS = ("mouth_corr", "mouth_still", "mouth_corr_all", "mouth_mae", "av_offset", "sync_c",
            "sync_d", "identity", "psnr", "ssim", "fid", "fvd", "seam_ratio")  # fmt: skip


@dataclass(frozen=True)
class ResultsConfig:
    clips: int = 32  # test clips in the main table (0: all)
    main_steps: int = 8  # steps of the main, ANS and ablation rows (READ's 8; 0: the model's)
    grid_clips: int = 8  # test clips per steps x guidance cell
    steps: tuple[int, ...] = (4, 6, 8, 10)
    guidance: tuple[str, ...] = ("split", "joint")
    long_clips: int = 4
    seed: int = 0
    syncnet: str = ""
    inception: str = ""
    i3d: str = ""
    device: str = "cpu"
    ablations: dict = field(default_factory=dict)  # name -> model folder
    tables: tuple[str, ...] = TABLES  # which tables to compute


def generate_set(pipe, records: list[dict], out: Path, progress: bool, **kw) -> dict:
    """Generate ``out/<id>.mp4`` for each record; returns timing (seconds per 121 frames)."""

    out.mkdir(parents=True, exist_ok=True)
    secs, frames = 0.0, 0
    for rec in tqdm(records, desc=f"generate {out.name}", unit="clip", disable=not progress):
        audio = resolve(rec, "audio") if rec.get("audio") else resolve(rec, "video")
        r = pipe.generate_to_file(resolve(rec, "ref"), audio, out / f"{rec['id']}.mp4",
                                  progress=False, **kw)  # fmt: skip
        secs += r.seconds
        frames += r.num_frames
    return {
        "seconds_per_clip": secs / max(frames, 1) * 121,
        "rtf": secs / max(frames / 25, 1e-9),
        "videos": len(records),
    }


def _score(pred: Path, data: str | Path, out: Path, cfg: ResultsConfig, **eval_kw) -> dict:

    ecfg = EvalConfig(
        syncnet=cfg.syncnet, inception=cfg.inception, i3d=cfg.i3d, device=cfg.device, **eval_kw
    )
    return evaluate(pred, data, out, ecfg, progress=False)


def _clips(pipe) -> dict:
    """A model's clip length and motion latents: seams are scored at its own clip boundaries."""
    st = pipe.settings()
    return {"clip_frames": st.clip_frames, "motion_latents": st.motion_latents}


def score_set(
    pipe, records: list[dict], ref, out: Path, name: str, cfg: ResultsConfig, progress: bool, **kw
) -> dict:
    """Generate ``out/name/<id>.mp4`` for ``records`` (``kw``: generation settings), score them
    against ``ref`` into ``out/eval_<name>`` with seams at the model's own clip boundaries, and
    return one table row (the report's metrics and the timing)."""
    t = generate_set(pipe, records, out / name, progress, seed=cfg.seed, **kw)
    return _row(_score(out / name, ref, out / f"eval_{name}", cfg, **_clips(pipe)), t)


def _row(report: dict, timing: dict) -> dict:
    row = {k: report[k] for k in ROW_KEYS if k in report}
    return {**row, **timing}


def _sha(path: Path) -> str | None:

    return file_sha256(path) if path.is_file() else None


def _model_fingerprint(model: str | Path) -> dict:

    files = {**model_files(model), "pipeline": Path(model) / "pipeline.json"}
    return {k: _sha(p) for k, p in files.items()}


class _Progress:
    """The finished rows of ``out/results.json``, reused while their fingerprint matches."""

    def __init__(self, out: Path, base: dict, progress: bool) -> None:
        self.path, self.base = out / "results.json", base
        old = {}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text()).get("done") or {}
            except (json.JSONDecodeError, AttributeError):
                old = {}
        self.done: dict = {}
        self.old = old
        self.reused = 0
        self.progress = progress

    def _fp(self, extra: dict | None) -> str:

        blob = json.dumps({**self.base, **(extra or {})}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def row(self, key: str, compute, extra: dict | None = None) -> dict:
        fp = self._fp(extra)
        hit = self.old.get(key)
        if hit and hit.get("fingerprint") == fp:
            self.reused += 1
            row = hit["row"]
        else:
            row = compute()
        self.done[key] = {"fingerprint": fp, "row": row}
        return row

    def save(self, res: dict) -> None:
        # rows of the old file not (yet) redone stay, so a second interruption loses nothing
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps({**res, "done": {**self.old, **self.done}}, indent=1))
        tmp.replace(self.path)


def _check_tables(cfg: ResultsConfig, data: str | Path | None, long: str | Path | None) -> None:
    """The tables asked for are known, and the data they need is given."""

    bad = [t for t in cfg.tables if t not in TABLES]
    if bad or not cfg.tables:
        raise ReadtalkError(f"tables must be some of {', '.join(TABLES)}, got {bad or 'none'}")
    need_data = [t for t in cfg.tables if t != "ans"]
    if need_data and data is None:
        raise ReadtalkError(f"the {', '.join(need_data)} table(s) need --data (a test split)")
    if cfg.tables == ("ans",) and long is None:
        raise ReadtalkError("the ans table needs --long (a dataset of long clips)")


def _fingerprint_base(
    model: str | Path, data: str | Path | None, cfg: ResultsConfig, tests: list[dict], pipe
) -> dict:
    """What every row depends on: the model files, the dataset, the settings, the test clips
    and the model's resolved generation defaults."""

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("ablations", "tables")}
    return {
        "model": _model_fingerprint(model),
        "data": _sha(Path(data) / "manifest.jsonl") if data is not None else None,
        "settings": settings,
        "tests": [r["id"] for r in tests],
        # the model's resolved defaults, code defaults included
        "pipeline": pipe.settings().to_dict(),
    }


def _window_spread(report: dict) -> dict:
    """How lip sync and frame change vary over a report's windows (the ANS table's columns)."""

    windows = [w for ws in report["windows"].values() for w in ws]
    per_win = [w["mouth_corr"] for w in windows if w.get("mouth_corr") is not None]
    return {
        "window_mouth_corr_std": float(np.std(per_win)) if per_win else None,
        "window_change_std": float(np.std([w["change"] for w in windows])),
    }


@dataclass
class _Tables:
    """Computes the tables' rows into ``res``, reusing finished ones (``book``) and saving
    ``results.json`` after each."""

    pipe: Pipeline
    tests: list[dict]  # the main table's test clips
    data: str | Path | None
    out: Path
    cfg: ResultsConfig
    progress: bool
    book: _Progress
    res: dict

    @property
    def main_kw(self) -> dict:
        """Generation settings of the main, ANS and ablation rows."""
        return {"steps": self.cfg.main_steps} if self.cfg.main_steps else {}

    def _score(self, pipe, records: list[dict], name: str, **kw) -> dict:
        return score_set(pipe, records, self.data, self.out, name, self.cfg, self.progress, **kw)

    def main(self) -> None:
        self.res["main"] = self.book.row(
            "main", partial(self._score, self.pipe, self.tests, "main", **self.main_kw)
        )
        self.book.save(self.res)

    def _grid_cell(self, name: str, guidance: str, steps: int) -> dict:
        grid = self.tests[: self.cfg.grid_clips]
        row = self._score(self.pipe, grid, name, steps=steps, guidance=guidance)
        shutil.rmtree(self.out / name)  # keep the folder small: the metrics stay
        return row

    def grid(self) -> None:
        """Steps x guidance on the first ``grid_clips`` test clips (an empty list when not
        asked for)."""
        self.res["grid"] = []
        for g in self.cfg.guidance if "grid" in self.cfg.tables else ():
            for s in self.cfg.steps:
                name = f"{g}_{s}"
                row = self.book.row(f"grid_{name}", partial(self._grid_cell, name, g, s))
                self.res["grid"].append({"guidance": g, "steps": s, **row})
                self.book.save(self.res)

    def _ans_row(self, longs: list[dict], long: str | Path, name: str, mode: dict) -> dict:
        kw = {**self.main_kw, **mode}
        out, cfg = self.out, self.cfg
        t = generate_set(self.pipe, longs, out / name, self.progress, seed=cfg.seed, **kw)
        rep = _score(out / name, long, out / f"eval_{name}", cfg, **_clips(self.pipe))
        return {**_row(rep, t), **_window_spread(rep)}

    def ans(self, long: str | Path) -> None:
        """ANS vs plain chunking on the long clips of ``long``."""
        longs = load_manifest(long, "test")[: self.cfg.long_clips] or load_manifest(long)
        self.res["ans"] = []
        for name, mode in ANS_MODES.items():
            extra = {  # the resolved settings: a changed default recomputes the row
                "long": _sha(Path(long) / "manifest.jsonl"),
                "settings": self.pipe.settings(**self.main_kw, **mode).to_dict(),
            }
            row = self.book.row(
                f"ans_{name}", partial(self._ans_row, longs, long, name, mode), extra
            )
            self.res["ans"].append({"mode": name, **row})
            self.book.save(self.res)

    def _ablation_row(self, name: str, mdir: str | Path) -> dict:
        other = Pipeline.from_pretrained(mdir, device=self.cfg.device)
        return self._score(other, self.tests, f"abl_{name}", **self.main_kw)

    def ablations(self) -> None:
        """Every ``--ablation`` model scored like the main one (an empty list when not asked
        for)."""
        self.res["ablations"] = []
        for name, mdir in self.cfg.ablations.items() if "ablations" in self.cfg.tables else ():
            extra = {"ablation": _model_fingerprint(mdir)}
            row = self.book.row(f"abl_{name}", partial(self._ablation_row, name, mdir), extra)
            self.res["ablations"].append({"name": name, "model": str(mdir), **row})
            self.book.save(self.res)


def run_results(
    model: str | Path,
    data: str | Path | None,
    out: str | Path,
    cfg: ResultsConfig = ResultsConfig(),
    long: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Every table; writes ``results.json``, ``results.md`` and plots into ``out``."""

    _check_tables(cfg, data, long)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tests = load_manifest(data, "test") if data is not None else []
    if cfg.clips:
        tests = tests[: cfg.clips]
    pipe = Pipeline.from_pretrained(model, device=cfg.device)
    res: dict = {
        "model": str(model),
        "data": str(data) if data is not None else None,
        "clips": len(tests),
        "clip_frames": _clips(pipe)["clip_frames"],
        "main_steps": cfg.main_steps or None,
    }
    book = _Progress(out, _fingerprint_base(model, data, cfg, tests, pipe), progress)
    tables = _Tables(pipe, tests, data, out, cfg, progress, book, res)
    if "main" in cfg.tables:
        tables.main()
    tables.grid()
    if long and "ans" in cfg.tables:
        tables.ans(long)
    tables.ablations()
    res["reused_rows"] = book.reused

    book.save(res)
    (out / "results.md").write_text(results_markdown(res))
    if res["grid"]:
        _plot_grid(res["grid"], out / "steps_guidance.png")
    return res


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict], first: list[str]) -> str:
    keys = first + [k for k in (*ROW_KEYS, "seconds_per_clip", "rtf") if any(k in r for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def results_markdown(res: dict) -> str:
    parts = [
        f"Model `{res['model']}`, data `{res['data']}` (test split, {res['clips']} clips; main "
        f"table, ANS and ablations at {res.get('main_steps') or 'the model default'} steps). "
        "seconds_per_clip: generation wall time per 121-frame clip; rtf: time / audio duration."
    ]
    if res.get("main"):
        parts.append("## Main table\n\n" + _table([{"model": "default", **res["main"]}], ["model"]))
    if res.get("grid"):
        parts.append("## Steps and guidance\n\n" + _table(res["grid"], ["guidance", "steps"]))
    if res.get("ans"):
        parts.append("## ANS vs plain chunking\n\n" + _table(res["ans"], ["mode"]))
    if res.get("ablations"):
        parts.append("## Ablations\n\n" + _table(res["ablations"], ["name"]))
    return "\n\n".join(parts) + "\n"


def _plot_grid(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for g in sorted({r["guidance"] for r in rows}):
        sel = [r for r in rows if r["guidance"] == g]
        y = [r.get("mouth_corr", r.get("identity")) for r in sel]
        ax.plot([r["seconds_per_clip"] for r in sel], y, marker="o", label=f"{g}-CFG")
        for r, yy in zip(sel, y, strict=True):
            if yy is not None:
                ax.annotate(str(r["steps"]), (r["seconds_per_clip"], yy), fontsize=8)
    ax.set(xlabel="seconds per 121-frame clip", ylabel="mouth_corr", title="steps vs quality")
    ax.legend()
    save_figure(fig, path)
