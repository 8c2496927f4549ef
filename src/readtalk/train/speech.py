"""Stage 2: self-supervised pre-training of the SpeechAE on a dataset's speech (Whisper frozen).

    readtalk train speech --data data/synthtalk --out runs/speech

Front-end features of every clip are computed once and cached in the run folder (the front end
is frozen). Each step draws ``batch_size`` random windows of ``clip_frames`` (8k+1) frames from
the training split; the loss is MSE on standardised features plus ``nce_weight`` x frame-level
InfoNCE. Evaluation on the test split (held-out identities) reports the reconstruction MSE and
frame-retrieval accuracy (a reconstructed frame must find its own original among all frames of
its clip; chance is 1/F). The result is ``speechae.safetensors`` in the run folder.

``mode`` makes the two SpeechAEs of READ's ablation instead, without training (the release is
written right after the feature statistics, and the run has no steps):

* ``random`` ("not pre-trained"): the SpeechAE exactly as pre-training would start it, with
  the data's feature standardisation and the seeded random initialisation (``train.seed``),
  frozen like the pre-trained one when the DiT trains on its codes;
* ``raw`` ("absent"): no network; the codes are the standardised features themselves, the
  eight video frames of each latent frame stacked (``SpeechAEConfig.kind = "raw"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from readtalk.config import to_dict
from readtalk.data.manifest import clip_audio_path, load_manifest, resolve
from readtalk.errors import ReadtalkError
from readtalk.media import load_audio, probe
from readtalk.release import atomic_save, save_release
from readtalk.speech.frontend import load_front_end
from readtalk.speech.speechae import (
    SPEECHAE_KIND,
    SPEECHAE_SIZES,
    TIME_FACTOR,
    SpeechAE,
    SpeechAEConfig,
    retrieval_accuracy,
    speechae_losses,
)
from readtalk.train import dist
from readtalk.train.common import fit, start_run
from readtalk.train.optim import OptimConfig

MODES = ("pretrain", "random", "raw")


@dataclass(frozen=True)
class SpeechRunConfig:
    data: str = ""  # dataset folder (manifest.jsonl)
    front_end: str = "whisper"  # whisper | logmel
    whisper: str = ""  # whisper-tiny weights (HF folder or CTranslate2 model.bin); "" = default
    size: str = "small"  # SpeechAE size preset
    hidden: int = 0  # 0: the preset's
    code_dim: int = 0  # 0: the preset's
    clip_frames: int = 49  # training window, 8k+1
    nce_weight: float = 0.1
    temperature: float = 0.1
    mode: str = "pretrain"  # pretrain | random (ablation: not pre-trained) | raw (ablation: absent)
    # random / raw (nothing trains): the feature statistics come from this many training clips
    # (evenly spread over the split; 0: all), and no test features are computed
    stats_clips: int = 0
    train: OptimConfig = field(default_factory=OptimConfig)

    def model_config(self, feat_dim: int, front_end: str) -> SpeechAEConfig:
        if self.size not in SPEECHAE_SIZES:
            raise ReadtalkError(
                f"unknown SpeechAE size {self.size!r} (known: {', '.join(SPEECHAE_SIZES)})"
            )
        base = SPEECHAE_SIZES[self.size]
        if self.mode == "raw":
            return SpeechAEConfig(
                feat_dim=feat_dim, code_dim=TIME_FACTOR * feat_dim, front_end=front_end, kind="raw"
            )
        return dataclasses.replace(
            base,
            feat_dim=feat_dim,
            front_end=front_end,
            hidden=self.hidden or base.hidden,
            code_dim=self.code_dim or base.code_dim,
        )

    def validate(self) -> None:
        if not self.data:
            raise ReadtalkError("no dataset given (--data)")
        if self.clip_frames < 9 or (self.clip_frames - 1) % 8:
            raise ReadtalkError(f"clip_frames must be 8k+1 and >= 9, got {self.clip_frames}")
        if self.front_end not in ("whisper", "logmel"):
            raise ReadtalkError(f"front_end must be whisper or logmel, got {self.front_end!r}")
        if self.mode not in MODES:
            raise ReadtalkError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.stats_clips < 0:
            raise ReadtalkError(f"stats_clips must be >= 0, got {self.stats_clips}")
        self.train.validate()


# ------------------------------------------------------------------------------------- features


def extract_features(
    records: list[dict], front_end, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Per clip: (F, 2 * dim) front-end features, two feature frames per video frame."""

    out = {}
    for rec in tqdm(
        records, desc=f"features ({front_end.name})", unit="clip", disable=not progress
    ):
        audio = load_audio(clip_audio_path(rec))
        frames = int(rec.get("frames") or probe(resolve(rec, "video")).frames)
        feats = front_end.video_features(audio, frames)  # (F, 2, dim)
        out[rec["id"]] = feats.reshape(frames, -1).float().contiguous()
    return out


def cached_features(cfg: SpeechRunConfig, run_dir: Path, progress: bool) -> dict:
    """{"train": {id: feats}, "test": {...}, "front_end": name, "dim": d}, cached in the run."""

    front_end = load_front_end(cfg.front_end, cfg.whisper or None)
    path = run_dir / f"features-{front_end.name}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    records = load_manifest(cfg.data)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    if cfg.mode != "pretrain":  # statistics only: no evaluation, maybe a subset
        test = []
        if 0 < cfg.stats_clips < len(train):
            train = [train[int(i)] for i in np.linspace(0, len(train) - 1, cfg.stats_clips).round()]
    cache = {
        "front_end": front_end.name,
        "dim": 2 * front_end.dim,
        "train": extract_features(train, front_end, progress),
        "test": extract_features(test, front_end, progress),
    }
    if not cache["train"]:
        raise ReadtalkError(f"{cfg.data} has no clips in the train split")
    atomic_save(cache, path)
    return cache


def sample_batch(
    feats: list[torch.Tensor], frames: int, batch: int, rng: np.random.Generator
) -> torch.Tensor:
    """``batch`` random windows of ``frames`` frames: (B, frames, D)."""
    out = []
    for _ in range(batch):
        x = feats[int(rng.integers(len(feats)))]
        start = int(rng.integers(0, x.shape[0] - frames + 1))
        out.append(x[start : start + frames])
    return torch.stack(out)


@torch.no_grad()
def evaluate(model: SpeechAE, feats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reconstruction MSE (standardised features) and frame-retrieval accuracy on whole clips
    (each cut to the longest 8k+1 prefix)."""
    mse, acc, chance, n = 0.0, 0.0, 0.0, 0
    device = next(model.parameters()).device
    for x in feats.values():
        frames = 1 + 8 * ((x.shape[0] - 1) // 8)
        x = x[None, :frames].to(device)
        losses = speechae_losses(model, x)
        mse += float(losses["mse"])
        acc += retrieval_accuracy(model, x)
        chance += 1.0 / frames
        n += 1
    if n == 0:
        return {}
    return {"mse": mse / n, "retrieval": acc / n, "retrieval_chance": chance / n, "clips": n}


# -------------------------------------------------------------------------------------- training


def train_speech(
    cfg: SpeechRunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Train (or resume) a SpeechAE; returns the path of the release weights.

    ``stop_at`` ends the run after that many steps as an interruption would (the last
    checkpoint stays, no release is written, None is returned); ``resume`` continues it.
    """
    run = start_run(cfg, out, resume)
    tc = cfg.train
    # rank 0 computes the features; the others then read its file
    cache = dist.main_first(lambda show: cached_features(cfg, run.root, show), progress)
    train_feats = [x for x in cache["train"].values() if x.shape[0] >= cfg.clip_frames]
    if not train_feats:
        raise ReadtalkError(f"no training clip has {cfg.clip_frames} frames; lower clip_frames")
    mcfg = cfg.model_config(cache["dim"], cache["front_end"])
    model = SpeechAE(mcfg)
    model.set_stats(torch.cat(train_feats))
    release = run.root / "speechae.safetensors"
    if cfg.mode != "pretrain":  # an ablation's SpeechAE: no training
        if dist.is_main():
            save_release(release, model.state_dict(), SPEECHAE_KIND, mcfg.to_json())
            run.log(f"SpeechAE {mcfg} ({cfg.mode}, not trained): wrote {release}")
        dist.barrier()
        return release
    model.to(run.device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    run.log(
        f"SpeechAE {mcfg} ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{len(train_feats)} training clips, front end {cache['front_end']}"
    )

    part = dist.share(tc.batch_size)  # this rank's rows of the global batch (fit adds DDP)

    def loss_fn(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        batch = sample_batch(train_feats, cfg.clip_frames, tc.batch_size, rng)[part]
        batch = batch.to(run.device)
        losses = speechae_losses(model, batch, cfg.temperature)
        return {"loss": losses["mse"] + cfg.nce_weight * losses["nce"], **losses}

    test = cache["test"]
    done = fit(
        run,
        tc,
        model,
        opt,
        loss_fn,
        (lambda: evaluate(model, test)) if test else None,
        to_dict(cfg),
        "train speech",
        progress,
        stop_at,
        resume,
    )
    if not done:
        return None
    if dist.is_main():
        save_release(release, model.state_dict(), SPEECHAE_KIND, mcfg.to_json())
        run.log(f"wrote {release}")
    dist.barrier()
    return release
