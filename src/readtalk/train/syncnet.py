"""Train a SyncNet (the lip-sync judge behind Sync-C / Sync-D) on a dataset's talking heads.

    readtalk train syncnet --data data/st1000 --out runs/syncnet --set size=small96

Each step draws ``batch_size`` 5-frame video windows (random training clip, random time ``t``,
random horizontal flip) and scores each against candidate 0.2-s audio windows: its own clip's
audio at ``t + d`` for every ``d`` in ``-max_shift..max_shift`` (``d = 0`` is the match) and the
aligned audio of the batch's other clips. The loss is the multi-way cross-entropy of
"Perfect match" (Chung, Chung & Kang, ICASSP 2019) with logits = minus the Euclidean distance
between embeddings. It asks for exactly what scoring reads off, the true offset having the
smallest distance among the shifts of the same clip, with no margin to tune; the original
paper's pairwise contrastive loss needs a margin and a positive/negative balance, and Perfect
match reports it converging more slowly and synchronising worse.

Frames are decoded once, cropped and resized to the network's input, and kept in a memory-mapped
cache in the run folder with each clip's MFCCs. Evaluation on the test split scores whole clips
by the official protocol (``readtalk.eval.syncnet``): the fraction whose offset is within one
frame of 0, mean Sync-C / Sync-D, and the same for the clips with the audio delayed by
``eval_shift`` frames (whose true offset is then ``-eval_shift``). ``conf0`` is the median of the
distance curve minus its value at offset 0: high for in-sync clips, about 0 for shifted ones.
The result is ``syncnet.safetensors``, loadable by ``readtalk sync --weights``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from readtalk.config import to_dict
from readtalk.data.manifest import load_manifest, resolve
from readtalk.errors import ReadtalkError
from readtalk.eval.syncnet import (
    CROPS,
    RELEASE_KIND,
    SYNCNET_SIZES,
    WINDOW,
    SyncNet,
    audio_windows,
    crop_frames,
    embed_audio,
    embed_video,
    mfcc,
    pair_distance,
    score_distances,
    video_windows,
    window_count,
    window_distances,
)
from readtalk.media import load_audio, probe, read_video
from readtalk.release import atomic_save, save_release
from readtalk.train import dist
from readtalk.train.common import fit, start_run
from readtalk.train.optim import OptimConfig


@dataclass(frozen=True)
class SyncNetRunConfig:
    data: str = ""  # dataset folder (manifest.jsonl with video and, optionally, audio)
    size: str = "small96"  # SyncNet size (readtalk.eval.syncnet.SYNCNET_SIZES)
    crop: str = "full"  # full | lower (see readtalk.eval.syncnet.crop_frames)
    max_shift: int = 6  # same-clip negatives: audio shifted by 1..max_shift frames either way
    flip: bool = True  # random horizontal flips (a mirror keeps the sync)
    eval_clips: int = 0  # test clips scored at each evaluation (0: all)
    eval_shift: int = 10  # audio shift (frames) of the out-of-sync evaluation
    vshift: int = 15  # offsets searched when scoring: -vshift..vshift
    train: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=3000, batch_size=32, lr=1e-3, warmup=100, eval_every=250, ckpt_every=250
        )
    )

    def validate(self) -> None:
        if not self.data:
            raise ReadtalkError("no dataset given (--data)")
        if self.size not in SYNCNET_SIZES:
            raise ReadtalkError(
                f"unknown SyncNet size {self.size!r} (known: {', '.join(SYNCNET_SIZES)})"
            )
        if self.crop not in CROPS:
            raise ReadtalkError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.max_shift < 1 or self.eval_shift < 1 or self.vshift < 1:
            raise ReadtalkError("max_shift, eval_shift and vshift must be at least 1")
        if self.eval_clips < 0:
            raise ReadtalkError(f"eval_clips must be >= 0, got {self.eval_clips}")
        self.train.validate()
        if self.train.batch_size < 2:
            raise ReadtalkError("train.batch_size must be at least 2 (BatchNorm)")


# ------------------------------------------------------------------------------------ the data


class ClipBank:
    """Every clip of a dataset as network input: cropped uint8 frames in one memory-mapped array
    (total frames, S, S, 3) and MFCCs (T, 13) per clip, cached in a folder.

    ``windows[c]`` is the number of scored 5-frame windows of clip ``c`` (official count)."""

    def __init__(self, records: list[dict], size: int, crop: str, folder: Path, progress: bool):
        stem = folder / f"clips-{crop}-{size}"
        index_path = stem.with_suffix(".pt")
        if not index_path.is_file():  # written last: its presence means the cache is complete
            self._build(records, size, crop, stem, progress)
        index = torch.load(index_path, map_location="cpu", weights_only=False)
        self.ids: list[str] = index["ids"]
        self.splits: list[str] = index["splits"]
        self.starts: np.ndarray = index["starts"]
        self.windows: np.ndarray = index["windows"]
        self.mfcc: list[np.ndarray] = index["mfcc"]
        self.frames = np.load(stem.with_suffix(".npy"), mmap_mode="r")

    @staticmethod
    def _build(records: list[dict], size: int, crop: str, stem: Path, progress: bool) -> None:

        counts = [int(r.get("frames") or probe(resolve(r, "video")).frames) for r in records]
        tmp = stem.with_name(f".{stem.name}.partial.npy")
        frames = np.lib.format.open_memmap(tmp, "w+", np.uint8, (sum(counts), size, size, 3))
        starts, windows, feats, at = [], [], [], 0
        for rec, n in tqdm(
            list(zip(records, counts, strict=True)),
            desc="decode clips",
            unit="clip",
            disable=not progress,
        ):
            video = read_video(resolve(rec, "video"), n)
            audio = load_audio(resolve(rec, "audio") if rec.get("audio") else resolve(rec, "video"))
            frames[at : at + len(video)] = crop_frames(video, size, crop)
            starts.append(at)
            windows.append(max(0, window_count(len(video), len(audio))))
            feats.append(mfcc(audio))
            at += n
        frames.flush()
        del frames
        tmp.replace(stem.with_suffix(".npy"))
        index = {
            "ids": [r["id"] for r in records],
            "splits": [r["split"] for r in records],
            "starts": np.asarray(starts, np.int64),
            "windows": np.asarray(windows, np.int64),
            "mfcc": feats,
        }
        atomic_save(index, stem.with_suffix(".pt"))

    def clips(self, split: str) -> list[int]:
        return [c for c, s in enumerate(self.splits) if s == split]

    def crops(self, c: int) -> np.ndarray:
        """Clip ``c``'s cropped frames (F, S, S, 3), enough for all its windows."""
        a = int(self.starts[c])
        return self.frames[a : a + int(self.windows[c]) + WINDOW - 1]


def sample_batch(
    bank: ClipBank, clips: list[int], batch: int, max_shift: int, flip: bool, rng
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Video windows (B, 3, 5, S, S), their candidate audio windows (B, 2 max_shift + 1, 1, 13,
    20) at shifts ``-max_shift..max_shift`` (the match in the middle) and each item's clip."""
    video, audio, which = [], [], []
    span = 2 * max_shift + 1
    for _ in range(batch):
        c = clips[int(rng.integers(len(clips)))]
        t = int(rng.integers(max_shift, int(bank.windows[c]) - max_shift))
        a = int(bank.starts[c]) + t
        win = bank.frames[a : a + WINDOW]
        if flip and rng.uniform() < 0.5:
            win = win[:, :, ::-1]
        video.append(video_windows(np.ascontiguousarray(win), 0, 1))
        audio.append(audio_windows(bank.mfcc[c], t - max_shift, t - max_shift + span))
        which.append(c)
    return torch.cat(video), torch.stack(audio), np.asarray(which)


def multiway_loss(
    model: SyncNet, video: torch.Tensor, audio: torch.Tensor, clips: np.ndarray
) -> dict[str, torch.Tensor]:
    """Cross-entropy over [own clip's shifts | other clips' aligned audio], logits = -distance."""
    b, span = audio.shape[:2]
    mid = span // 2
    v = model.forward_video(video)  # (B, D)
    a = model.forward_audio(audio.flatten(0, 1)).unflatten(0, (b, span))  # (B, span, D)
    own = -pair_distance(v[:, None], a)  # (B, span)
    other = -pair_distance(v[:, None], a[None, :, mid])  # (B, B): item i vs item j's match
    same = torch.from_numpy(clips[:, None] == clips[None, :]).to(v.device)  # own clip, diagonal
    logits = torch.cat([own, other.masked_fill(same, float("-inf"))], 1)
    target = torch.full((b,), mid, dtype=torch.long, device=v.device)
    loss = F.cross_entropy(logits, target)
    with torch.no_grad():
        acc = (logits.argmax(1) == mid).float().mean()
        acc_shift = (own.argmax(1) == mid).float().mean()
        gap = (own[:, mid] - torch.cat([own[:, :mid], own[:, mid + 1 :]], 1).max(1).values).mean()
    return {"loss": loss, "acc": acc, "acc_shift": acc_shift, "margin": gap}


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(model: SyncNet, bank: ClipBank, clips: list[int], cfg: SyncNetRunConfig) -> dict:
    """Official-protocol scores of whole test clips, in sync and with the audio shifted."""
    s = cfg.eval_shift
    rows = []
    for c in clips:
        n = int(bank.windows[c])
        if n <= s:
            continue
        v = embed_video(model, bank.crops(c), n)
        a = embed_audio(model, bank.mfcc[c], n)
        # shifted: video window i + s against audio window i, the audio s frames late (offset -s)
        for name, (vv, aa) in {"": (v, a), "shifted_": (v[s:], a[:-s])}.items():
            r = score_distances(window_distances(vv, aa, cfg.vshift), cfg.vshift)
            truth = -s if name else 0
            rows.append(
                {
                    "kind": name,
                    "hit": abs(r.offset - truth) <= 1,
                    "sync_c": r.sync_c,
                    "sync_d": r.sync_d,
                    "conf0": float(np.median(r.curve) - r.curve[cfg.vshift]),
                }
            )
    if not rows:
        return {}
    out: dict[str, float] = {"clips": len(rows) // 2}
    for kind in ("", "shifted_"):
        sel = [r for r in rows if r["kind"] == kind]
        out[f"{kind}offset_acc"] = float(np.mean([r["hit"] for r in sel]))
        for k in ("sync_c", "sync_d", "conf0"):
            out[f"{kind}{k}"] = float(np.mean([r[k] for r in sel]))
    return out


# -------------------------------------------------------------------------------------- training


def train_syncnet(
    cfg: SyncNetRunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Train (or resume) a SyncNet; returns the release path (None when stopped by ``stop_at``)."""
    run = start_run(cfg, out, resume)
    tc = cfg.train
    mcfg = SYNCNET_SIZES[cfg.size]
    records = load_manifest(cfg.data)
    # rank 0 builds the frame cache; the others then read it
    bank = dist.main_first(
        lambda show: ClipBank(records, mcfg.image_size, cfg.crop, run.root, show), progress
    )
    need = 2 * cfg.max_shift + 1
    train_clips = [c for c in bank.clips("train") if bank.windows[c] >= need]
    if not train_clips:
        raise ReadtalkError(
            f"no training clip has the {need + WINDOW - 1} frames max_shift={cfg.max_shift} needs"
        )
    test_clips = bank.clips("test")
    if cfg.eval_clips:
        test_clips = test_clips[: cfg.eval_clips]
    model = SyncNet(mcfg).to(run.device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    run.log(
        f"SyncNet {cfg.size} ({sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{mcfg.image_size} px, crop {cfg.crop}), {len(train_clips)} training clips, "
        f"{len(test_clips)} test clips"
    )

    # Under torchrun each rank takes its rows of the global batch; the other-clip negatives of
    # the multi-way loss are then the rank's own rows (local negatives, as is usual).
    part = dist.share(tc.batch_size)

    def loss_fn(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        video, audio, clips = sample_batch(
            bank, train_clips, tc.batch_size, cfg.max_shift, cfg.flip, rng
        )
        video, audio = video[part].to(run.device), audio[part].to(run.device)
        return multiway_loss(model, video, audio, clips[part])

    done = fit(
        run,
        tc,
        model,
        opt,
        loss_fn,
        (lambda: evaluate(model, bank, test_clips, cfg)) if test_clips else None,
        to_dict(cfg),
        "train syncnet",
        progress,
        stop_at,
        resume,
    )
    if not done:
        return None
    release = run.root / "syncnet.safetensors"
    if dist.is_main():
        save_release(
            release,
            {k: v.cpu() for k, v in model.state_dict().items()},
            RELEASE_KIND,
            mcfg.to_json(),
            extra={"crop": cfg.crop, "size": cfg.size, "run_config": json.dumps(to_dict(cfg))},
        )
        run.log(f"wrote {release}")
    dist.barrier()
    return release
