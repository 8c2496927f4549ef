"""Stage 1b: train the factorised VAE's packer on top of a trained frame VAE.

    readtalk train packer --data data/synthtalk --vae runs/vae/vae.safetensors --out runs/fvae

Every frame of the first ``window`` frames of ``clips`` training clips is encoded alone by the
frame VAE (posterior mean; kept in ``frame_latents.pt`` in the run folder, so a resumed run does
not encode again, nor a run whose ``init`` is the release of a run that holds them for the same
frame VAE and window and for every clip this run trains on) and standardised per channel. Each
step draws ``batch_size`` random 8-frame groups with the frame before each (its context), packs
and unpacks them, and minimises the MSE of the standardised latents plus ``deviation_weight`` x
the MSE of each frame's deviation from its group's mean (where the mouth's motion lives: plain
MSE lets the packer draw one mean mouth for all 8 frames). With probability ``context_dropout``
a group is decoded without its context, which is how a long video's decoding restarts after a
truncated prefix. The frame VAE stays frozen. Evaluation reconstructs held-out clips through the
whole factorised VAE (PSNR, SSIM and, on SynthTalk, the mouth scores of ``readtalk eval-vae``)
and reports the held-out latent MSE. The result is ``vae.safetensors`` (a ``FactorisedVAE``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from readtalk.config import to_dict
from readtalk.data.manifest import load_manifest, resolve
from readtalk.errors import ReadtalkError
from readtalk.media import fit_size, read_video, to_tensor
from readtalk.release import atomic_save
from readtalk.train import dist
from readtalk.train.common import fit, start_run
from readtalk.train.optim import OptimConfig
from readtalk.train.vae import eval_videos, evaluate_videos, is_synthtalk
from readtalk.vae.factorised import FactorisedConfig, FactorisedVAE
from readtalk.vae.model import VideoVAE

LATENTS = "frame_latents.pt"


@dataclass(frozen=True)
class PackerRunConfig:
    data: str = ""
    vae: str = ""  # the frame VAE: a readtalk vae.safetensors (VideoVAE)
    # or a factorised VAE to continue from: its frame VAE, frame statistics and packer (``vae``
    # is then not needed; width and group are its own)
    init: str = ""
    # False (with ``init``): only the decoder learns, so the latents stay exactly those of
    # ``init``'s encoder and a latent cache and DiT made with it stay valid
    train_encoder: bool = True
    residual: bool = False  # the decoder predicts each frame's change from the context frame
    width: int = 256  # packer convolution width
    group: int = 8  # frames per packed latent
    clips: int = 300  # training clips whose frames are encoded (0: all)
    window: int = 33  # frames of each clip encoded, 8k+1
    deviation_weight: float = 16.0
    context_dropout: float = 0.1
    # > 1: train on chains of this many consecutive groups of a clip, each decoded after the
    # last frame the decoder itself gave the group before (as at generation), the gradient
    # through the chain; the first group's context is the true frame (or dropped). 1: every
    # group on its own, after the true frame.
    unroll: int = 1
    eval_clips: int = 8
    eval_frames: int = 33
    train: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=3000,
            batch_size=32,
            lr=1e-3,
            weight_decay=0.0,
            warmup=100,
            eval_every=1000,
            ckpt_every=250,
        )
    )

    def validate(self) -> None:
        if not self.data:
            raise ReadtalkError("no dataset given (--data)")
        if not self.vae and not self.init:
            raise ReadtalkError("no frame VAE given (--vae, or init=a factorised VAE)")
        if not self.train_encoder and not self.init:
            raise ReadtalkError("train_encoder=false needs init= (the encoder to keep)")
        if self.group < 1 or self.width < 1:
            raise ReadtalkError(f"group and width must be >= 1, got {self.group}, {self.width}")
        for name in ("window", "eval_frames"):
            v = getattr(self, name)
            if v < 1 + self.group or (v - 1) % self.group:
                raise ReadtalkError(
                    f"{name} must be {self.group}k+1 with k >= 1 (e.g. 33), got {v}"
                )
        if self.unroll < 1 or self.unroll > (self.window - 1) // self.group:
            raise ReadtalkError(
                f"unroll must be 1..{(self.window - 1) // self.group} (the groups in a window of "
                f"{self.window} frames), got {self.unroll}"
            )
        if self.clips < 0:
            raise ReadtalkError(f"clips must be >= 0, got {self.clips}")
        if self.deviation_weight < 0 or not 0 <= self.context_dropout < 1:
            raise ReadtalkError("deviation_weight must be >= 0 and context_dropout in [0, 1)")
        self.train.validate()


@torch.no_grad()
def encode_frames(
    fvae, records: list[dict], frames: int, size: int, progress: bool
) -> torch.Tensor:
    """(N, frames, C, h, w) raw frame-VAE latents (posterior means) of each clip's start."""
    out = []
    for rec in tqdm(records, desc="encode frames", unit="clip", disable=not progress):
        video = read_video(resolve(rec, "video"), frames)
        if len(video) < frames:
            continue
        x = to_tensor(np.ascontiguousarray(fit_size(video[:frames], size)))[None]
        fvae.check_video(x)
        out.append(fvae.frame_means(x)[0])
    if not out:
        raise ReadtalkError(f"no training clip has {frames} frames; lower window")
    return torch.stack(out)


def state_sha256(module: torch.nn.Module) -> str:
    """A hash of a module's weights as float32 (the same for a release stored in float16 and
    its float32 copy inside a factorised VAE), naming the frame VAE a latent file belongs to."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _saved_latents(saved: dict, key: dict) -> torch.Tensor | None:
    """The latents of the clips ``key["ids"]`` from a saved latent file, or None when it was
    made with another frame VAE or window or lacks one of the clips. A file of more clips gives
    their rows (when every one of its clips was encoded, so that rows and ids align)."""
    if any(saved.get(k) != key[k] for k in ("frame_vae_sha256", "window")):
        return None
    ids, lat = saved.get("ids") or [], saved.get("latents")
    if ids == key["ids"]:
        return lat
    row = {i: r for r, i in enumerate(ids)}
    if lat is None or len(lat) != len(ids) or any(i not in row for i in key["ids"]):
        return None
    return lat[[row[i] for i in key["ids"]]]


def group_loss(y: torch.Tensor, x: torch.Tensor, deviation_weight: float) -> dict:
    """MSE of (B, g, C, h, w) latents plus the weighted MSE of each frame's deviation from its
    group's mean."""
    mse = (y - x).pow(2).mean()
    dev = ((y - y.mean(1, keepdim=True)) - (x - x.mean(1, keepdim=True))).pow(2).mean()
    return {"loss": mse + deviation_weight * dev, "mse": mse, "dev": dev}


def train_packer(
    cfg: PackerRunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Train (or resume) the packer; returns the release path (None when stopped early)."""

    run = start_run(cfg, out, resume)
    tc = cfg.train
    start = FactorisedVAE.load(cfg.init) if cfg.init else None
    if start is not None:
        frame = start.frame.eval()
        fcfg = dataclasses.replace(start.config, residual=cfg.residual)
    else:
        frame = VideoVAE.load(cfg.vae).eval()
        fcfg = FactorisedConfig(
            frame=frame.config,
            channels=frame.latent_channels,
            width=cfg.width,
            group=cfg.group,
            residual=cfg.residual,
        )
    for p in frame.parameters():
        p.requires_grad_(False)
    fvae = FactorisedVAE(fcfg, frame=frame)
    if start is not None:  # its packer; a decoder of another kind (residual) starts afresh
        fvae.packer.enc.load_state_dict(start.packer.enc.state_dict())
        if start.config.residual == cfg.residual:
            fvae.packer.dec.load_state_dict(start.packer.dec.state_dict())
        fvae.set_latent_stats(start.latents_mean, start.latents_std)
    if not cfg.train_encoder:
        fvae.packer.enc.requires_grad_(False)
    records = load_manifest(cfg.data)
    size = int(records[0].get("size") or 0)
    train_recs = [r for r in records if r["split"] == "train"]
    train_recs = train_recs[: cfg.clips] if cfg.clips else train_recs

    # the training clips' per-frame latents: encoded once, kept in the run folder
    key = {"frame_vae_sha256": state_sha256(frame), "ids": [r["id"] for r in train_recs]}
    key["window"] = cfg.window
    path = run.root / LATENTS
    lat = None
    # this run's own file (a resumed run), else that of the run init= came from: the same frame
    # VAE and window make the same latents, so chained runs encode the frames once
    sources = [path] + ([Path(cfg.init).parent / LATENTS] if cfg.init else [])
    for src in sources:
        if src.is_file():
            lat = _saved_latents(torch.load(src, map_location="cpu", weights_only=False), key)
            if lat is not None:
                if src != path:
                    run.log(f"frame latents from {src}")
                break
    if lat is None:
        lat = encode_frames(fvae, train_recs, cfg.window, size, progress)
        if dist.is_main():
            atomic_save({**key, "latents": lat}, path)
    if start is not None:  # the encoder's input standardisation stays as it was
        fvae.set_frame_stats(start.frame_mean, start.frame_std)
    else:
        fvae.set_frame_stats(lat.mean((0, 1, 3, 4)), lat.std((0, 1, 3, 4)).clamp_min(1e-6))
    s = fvae._std(lat)  # (N, F, C, h, w)
    n, f, c, h, w = s.shape
    g = cfg.group
    per_clip = (f - 1) // g
    runs = s[:, 1:].reshape(n * per_clip, g, c, h, w)
    prevs = s[:, 0 : f - 1 : g].reshape(n * per_clip, c, h, w)
    run.log(
        f"factorised VAE on {fcfg.frame.name}: {n} clips x {f} frames, "
        f"{len(runs)} groups; packer {sum(p.numel() for p in fvae.packer.parameters()):,} params"
    )
    test = eval_videos(
        [r for r in records if r["split"] == "test"], cfg.eval_frames, size, cfg.eval_clips
    )
    fvae.to(run.device)
    packer = fvae.packer
    params = [p for p in packer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    part = dist.share(tc.batch_size)

    def loss_fn(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        n_chain = cfg.unroll
        clip = rng.integers(n, size=tc.batch_size)
        first = rng.integers(per_clip - n_chain + 1, size=tc.batch_size)
        idx = torch.from_numpy(clip * per_clip + first)[part]  # each chain's first group
        have = torch.from_numpy(rng.random(tc.batch_size) >= cfg.context_dropout)[part]
        have = have.to(run.device)
        last = prevs[idx].to(run.device)  # the decoder's context: true, then its own
        out: dict[str, torch.Tensor] = {}
        for k in range(n_chain):
            x, prev = runs[idx + k].to(run.device), prevs[idx + k].to(run.device)
            y = packer.decode(packer.encode(x, prev), last, have if k == 0 else None)
            last = y[:, -1]
            for key, v in group_loss(y, x, cfg.deviation_weight).items():
                out[key] = out.get(key, 0) + v / n_chain
        return out

    test_lat = None
    if test:  # held-out per-frame latents, for the latent MSE of a whole round trip
        with torch.no_grad():
            test_lat = torch.cat([fvae.frame_latents(v[None].to(run.device)) for v in test])

    def evaluate() -> dict[str, float]:
        res = evaluate_videos(fvae, test, mouth=is_synthtalk(cfg.data))
        z = fvae.pack(test_lat)
        rt = torch.cat(list(fvae.unpack(z, None, True)), dim=1)
        res["latent_mse"] = float((rt - test_lat)[:, 1:].pow(2).mean())
        return res

    done = fit(
        run,
        tc,
        packer,
        opt,
        loss_fn,
        evaluate if test else None,
        to_dict(cfg),
        "train packer",
        progress,
        stop_at,
        resume,
    )
    if not done:
        return None
    release = run.root / "vae.safetensors"
    if dist.is_main():
        fvae.cpu().save(release)
        run.log(f"wrote {release}")
    dist.barrier()
    return release
