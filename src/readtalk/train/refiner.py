"""Train a factorised VAE's portrait refiner (``vae.refiner``): detail copied from the portrait.

    readtalk train refiner --data data/st1000 --vae runs/fvae/vae.safetensors --out runs/refiner

The frame VAE and the packer stay frozen, so the latents, the latent cache and the DiT stay
valid: the release is the same VAE with a refiner added. Once, at the start, ``clips`` training
clips are reconstructed through the whole VAE (their first ``window`` frames encoded and
decoded, as generation decodes), and ``frames_per_clip`` of those frames are kept, as uint8,
with the truth and the clip's reference portrait and the portrait's own round trip
(``refiner_data.pt`` in the run folder: a resumed run does not reconstruct again, nor does a
run whose ``--vae`` sits beside a matching one, as each round of a refiner trained in rounds).
Each step refines ``batch_size`` random kept frames with their clip's portrait (flipped together at
random) and minimises the L1 to the truth plus ``grad_weight`` x the L1 of the image gradients,
which is where blur shows. Evaluation reconstructs held-out clips with their portraits: PSNR,
SSIM, sharpness (whole frame, mouth and eyes) and, on SynthTalk, the mouth scores of
``readtalk eval-vae``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from readtalk.config import to_dict
from readtalk.data.manifest import load_manifest, load_reference, load_track, resolve
from readtalk.errors import ReadtalkError
from readtalk.eval.regions import has_geometry, synthtalk_regions
from readtalk.media import fit_size, read_video, to_tensor, to_uint8
from readtalk.release import atomic_save
from readtalk.train import dist
from readtalk.train.common import fit, start_run
from readtalk.train.optim import OptimConfig
from readtalk.train.packer import state_sha256
from readtalk.train.vae import (
    eval_videos,
    evaluate_videos,
    image_tensor,
    is_synthtalk,
    portrait_tensor,
    reconstruct,
)
from readtalk.vae.factorised import FactorisedVAE
from readtalk.vae.refiner import Refiner

DATA = "refiner_data.pt"


@dataclass(frozen=True)
class RefinerRunConfig:
    data: str = ""
    vae: str = ""  # a factorised VAE; its refiner, if of these sizes, is where training starts
    width: int = 16  # the refiner's flow network width (a vae's refiner of other sizes: replaced)
    scale: int = 4  # its resolution divisor
    clips: int = 600  # training clips reconstructed (0: all)
    window: int = 33  # frames of each clip encoded and decoded, 8k+1
    frames_per_clip: int = 8  # evenly spaced frames of the window kept for training
    grad_weight: float = 1.0
    # extra loss weight inside each frame's mouth box and eye boxes (SynthTalk tracks; other
    # data: ignored): the mouth must keep its own shape, not take the closed portrait's
    mouth_weight: float = 8.0
    eye_weight: float = 2.0
    flip: bool = True
    eval_clips: int = 8
    eval_frames: int = 33
    train: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=3000,
            batch_size=16,
            lr=1e-3,
            weight_decay=0.0,
            warmup=100,
            eval_every=500,
            ckpt_every=250,
        )
    )

    def validate(self) -> None:
        if not self.data:
            raise ReadtalkError("no dataset given (--data)")
        if not self.vae:
            raise ReadtalkError("no factorised VAE given (--vae)")
        for name in ("window", "eval_frames"):
            v = getattr(self, name)
            if v < 9 or (v - 1) % 8:
                raise ReadtalkError(f"{name} must be 8k+1 with k >= 1 (e.g. 33), got {v}")
        if not 1 <= self.frames_per_clip <= self.window:
            raise ReadtalkError(f"frames_per_clip must be 1..window, got {self.frames_per_clip}")
        if self.width < 1 or self.scale < 1 or self.clips < 0:
            raise ReadtalkError("width and scale must be >= 1, clips >= 0")
        if min(self.grad_weight, self.mouth_weight, self.eye_weight) < 0:
            raise ReadtalkError("grad_weight, mouth_weight and eye_weight must be >= 0")
        self.train.validate()


def with_refiner(vae: FactorisedVAE, width: int, scale: int) -> FactorisedVAE:
    """``vae`` itself when its refiner has these sizes (training continues it), else a copy
    sharing its frame VAE and packer with a new refiner of these sizes (one of other sizes is
    replaced, never silently kept)."""
    if vae.refiner is not None and _sizes(vae) == (width, scale):
        return vae
    cfg = dataclasses.replace(vae.config, refiner_width=width, refiner_scale=scale)
    out = FactorisedVAE(cfg, frame=vae.frame)
    out.packer = vae.packer
    for name in ("frame_mean", "frame_std", "latents_mean", "latents_std"):
        getattr(out, name).copy_(getattr(vae, name))
    return out


def _sizes(vae: FactorisedVAE) -> tuple[int, int]:
    return vae.config.refiner_width, vae.config.refiner_scale


@torch.no_grad()
def reconstruct_frames(
    vae: FactorisedVAE, records: list[dict], cfg: RefinerRunConfig, size: int, progress: bool
) -> dict[str, torch.Tensor]:
    """uint8 truth and reconstructions (N, k, 3, H, W), portraits and their round trips
    (N, 3, H, W) of the clips that have ``cfg.window`` frames, and ``index`` (N,): their
    positions in ``records``."""
    keep = kept_frames(cfg)
    out: dict[str, list] = {"truth": [], "recon": [], "ref": [], "ref_blur": [], "index": []}
    for i, rec in enumerate(tqdm(records, desc="reconstruct", unit="clip", disable=not progress)):
        video = read_video(resolve(rec, "video"), cfg.window)
        if len(video) < cfg.window:
            continue
        video = np.ascontiguousarray(fit_size(video[: cfg.window], size))
        y = reconstruct(vae, to_tensor(video)[None].to(vae.dtype))[0, :, keep]  # (3, k, H, W)
        ref = load_reference(rec, size)
        blur = vae.redraw(image_tensor(ref))  # (1, 3, H, W)
        out["index"].append(torch.tensor(i))
        out["truth"].append(torch.from_numpy(np.ascontiguousarray(video[keep])))
        out["recon"].append(torch.from_numpy(to_uint8(y)))
        out["ref"].append(torch.from_numpy(ref))
        out["ref_blur"].append(torch.from_numpy(to_uint8(blur[0, :, None])[0]))
    if not out["truth"]:
        raise ReadtalkError(f"no training clip has {cfg.window} frames; lower window")
    # (N, k, H, W, 3) / (N, H, W, 3) uint8 -> channels first
    res = {k: torch.stack(v) for k, v in out.items()}
    return {k: v if k == "index" else v.movedim(-1, -3).contiguous() for k, v in res.items()}


def kept_frames(cfg: RefinerRunConfig) -> np.ndarray:
    """The frames of a clip's window that training keeps (evenly spaced after frame 0)."""
    return np.linspace(1, cfg.window - 1, cfg.frames_per_clip).round().astype(int)


def region_boxes(records: list[dict], cfg: RefinerRunConfig, size: int) -> torch.Tensor | None:
    """(N, k, 3, 4) pixel boxes (x0, y0, x1, y1) of the mouth and the two eyes in each kept frame
    of ``records`` (SynthTalk tracks), or None when a clip's track has no face geometry."""
    keep, out = kept_frames(cfg), []
    for rec in records:
        track = load_track(rec)
        if not has_geometry(track):
            return None
        boxes = synthtalk_regions(track, size, cfg.window)
        out.append(np.concatenate([boxes["mouth"], boxes["eyes"]], axis=1)[keep])
    return torch.from_numpy(np.stack(out).astype(np.int64))


def box_weights(boxes: torch.Tensor, weights: torch.Tensor, size: int, flip: torch.Tensor):
    """(B, R, 4) boxes, (R,) extra weights, (B,) horizontal flips -> (B, 1, size, size) loss
    weights: 1, plus each box's weight inside it."""
    x0, y0, x1, y1 = boxes.unbind(-1)  # (B, R)
    x0, x1 = torch.where(flip[:, None], size - x1, x0), torch.where(flip[:, None], size - x0, x1)
    at = torch.arange(size, device=boxes.device)
    inx = (at >= x0[..., None]) & (at < x1[..., None])  # (B, R, W)
    iny = (at >= y0[..., None]) & (at < y1[..., None])  # (B, R, H)
    inside = (iny[..., :, None] & inx[..., None, :]).float()  # (B, R, H, W)
    return 1.0 + (inside * weights.view(1, -1, 1, 1)).sum(1, keepdim=True)


def _float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device).float() / 127.5 - 1.0


def image_grad_l1(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between the horizontal and vertical differences of two (N, 3, H, W) images, weighted
    per pixel by ``w`` (N, 1, H, W) when given."""
    dx = (y[..., :, 1:] - y[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
    dy = (y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
    if w is None:
        return dx.abs().mean() + dy.abs().mean()
    return (dx.abs() * w[..., :, 1:]).mean() + (dy.abs() * w[..., 1:, :]).mean()


def _load_vae(cfg: RefinerRunConfig, run) -> FactorisedVAE:
    """``cfg.vae`` with a refiner of the run's sizes (``with_refiner``); the log says whether
    the VAE's own refiner is continued or replaced."""
    given = FactorisedVAE.load(cfg.vae).eval()
    vae = with_refiner(given, cfg.width, cfg.scale)
    if given.refiner is not None:
        run.log(
            "continuing the VAE's own refiner"
            if vae is given
            else "a new refiner, replacing the VAE's (width {}, scale {})".format(*_sizes(given))
        )
    return vae


def _load_or_make(run, vae, train_recs, cfg, size, progress) -> dict[str, torch.Tensor]:
    """The run's reconstructions: its own ``refiner_data.pt`` (a resumed run), else the one
    beside ``cfg.vae`` when it was made from the same frame VAE, packer, clips and frames (a
    round that continues another run's refiner: hard-linked, or saved again where the file
    system cannot link), else made now (minutes) and saved."""
    key = {"vae_sha256": state_sha256(vae.frame) + state_sha256(vae.packer)}
    key.update(ids=[r["id"] for r in train_recs], window=cfg.window, k=cfg.frames_per_clip)
    path = run.root / DATA
    tensors = _matching(path, key)
    if tensors is not None:
        return tensors
    beside = Path(cfg.vae).parent / DATA
    reused = _matching(beside, key) if beside.resolve() != path.resolve() else None
    tensors = reused
    if tensors is None:
        tensors = reconstruct_frames(vae, train_recs, cfg, size, progress)
    if dist.is_main():
        if reused is None or not _hard_link(beside, path):
            atomic_save({**key, "tensors": tensors}, path)
        if reused is not None:
            run.log(f"reconstructions reused from {beside}")
    return tensors


def _matching(path: Path, key: dict) -> dict[str, torch.Tensor] | None:
    """The tensors of a ``refiner_data.pt`` made with ``key``, or None (no file, another key)."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return saved["tensors"] if all(saved.get(k) == v for k, v in key.items()) else None


def _hard_link(src: Path, dst: Path) -> bool:
    """``dst`` made the same file as ``src`` (no space); False where the file system cannot."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        return False
    return True


def train_refiner(
    cfg: RefinerRunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Train (or resume) the refiner; returns the release path (None when stopped early)."""
    run = start_run(cfg, out, resume)
    tc = cfg.train
    vae = _load_vae(cfg, run)
    vae.requires_grad_(False)
    refiner: Refiner = vae.refiner
    refiner.requires_grad_(True)
    records = load_manifest(cfg.data)
    size = int(records[0].get("size") or 0)
    refiner.check_size(size, size)
    train_recs = [r for r in records if r["split"] == "train"]
    train_recs = train_recs[: cfg.clips] if cfg.clips else train_recs
    data = _load_or_make(run, vae, train_recs, cfg, size, progress)
    n, k = data["truth"].shape[:2]
    rows = data["index"].tolist() if "index" in data else list(range(n))
    boxes = None
    if cfg.mouth_weight or cfg.eye_weight:
        boxes = region_boxes([train_recs[i] for i in rows], cfg, size)
        run.log("mouth and eye weights: " + ("on" if boxes is not None else "no face geometry"))
    box_w = torch.tensor([cfg.mouth_weight, cfg.eye_weight, cfg.eye_weight])
    run.log(
        f"refiner on {n} clips x {k} frames; {sum(p.numel() for p in refiner.parameters()):,} "
        f"params (width {vae.config.refiner_width}, scale {vae.config.refiner_scale})"
    )
    test_recs = [r for r in records if r["split"] == "test"][: cfg.eval_clips]
    test, refs = [], []
    for rec in test_recs:
        got = eval_videos([rec], cfg.eval_frames, size, 0)  # [] for a clip that is too short
        test += got
        refs += [portrait_tensor(rec, size)] * len(got)
    vae.to(run.device)
    opt = torch.optim.AdamW(refiner.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    part = dist.share(tc.batch_size)

    def loss_fn(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        clip = torch.from_numpy(rng.integers(n, size=tc.batch_size))[part]
        frame = torch.from_numpy(rng.integers(k, size=tc.batch_size))[part]
        flip = torch.from_numpy(rng.random(tc.batch_size) < 0.5)[part] & cfg.flip
        dev = run.device
        x, y = (_float(data[s][clip, frame], dev) for s in ("truth", "recon"))
        r, r0 = (_float(data[s][clip], dev) for s in ("ref", "ref_blur"))
        f = flip.to(dev).view(-1, 1, 1, 1)
        x, y, r, r0 = (torch.where(f, t.flip(-1), t) for t in (x, y, r, r0))
        out = refiner(y, refiner.prepare(r, r0))
        if boxes is None:
            w = None
            l1 = F.l1_loss(out, x)
        else:
            w = box_weights(boxes[clip, frame].to(dev), box_w.to(dev), x.shape[-1], flip.to(dev))
            l1 = ((out - x).abs() * w).mean()
        grad = image_grad_l1(out, x, w)
        return {"loss": l1 + cfg.grad_weight * grad, "l1": l1, "grad": grad}

    def evaluate() -> dict[str, float]:
        return evaluate_videos(vae, test, mouth=is_synthtalk(cfg.data), references=refs)

    done = fit(
        run, tc, refiner, opt, loss_fn, evaluate if test else None, to_dict(cfg),
        "train refiner", progress, stop_at, resume,
    )  # fmt: skip
    if not done:
        return None
    release = run.root / "vae.safetensors"
    if dist.is_main():
        vae.cpu().save(release)
        run.log(f"wrote {release}")
    dist.barrier()
    return release
