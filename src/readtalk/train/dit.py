"""Stage 3: train the A2V-DiT on a latent cache (``readtalk cache``).

    readtalk train dit --cache cache/synthtalk --out runs/dit --size tiny

Each step draws ``batch_size`` windows from the cache's train split (latents normalised with the
cache's per-channel statistics), per-frame timesteps from READ's ANS (``ans_train_timesteps``;
column 0 is the clean reference), Gaussian noise, and condition-dropout masks for
classifier-free guidance; the loss is the rectified-flow loss on the frames that carry noise
(``frame_loss_mask``). Evaluation is the same loss on the test split at fixed timesteps
(``EVAL_T``, all frames alike) with fixed noise, so it is deterministic and falls as the model
learns; it is reported for the online weights (``loss``) and the EMA weights (``ema_loss``).
The release ``dit.safetensors`` holds the EMA weights, the ``DiTConfig``, the latent statistics,
the diffusion settings and the VAE / SpeechAE the cache was made with.

With ``samples=N``, every evaluation also generates the first N test windows with the EMA
weights (8-step Split-CFG, fixed noise), decodes them with the cache's VAE, writes
``samples/step_XXXXXXX.mp4`` (the first window) and ``.png`` (a contact sheet, one row per
window), and, where the cache holds SynthTalk ground truth, scores lip sync: the Pearson
correlation of the mouth reader's per-frame lip gap on the generated frames with the true gap
(``sample_mouth_corr``), beside the same score for the VAE's reconstruction of the true latents
(``recon_mouth_corr``, the ceiling this VAE allows), and the fraction of frames in which a
mouth opening is visible at all (``*_mouth_visible``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from readtalk.config import to_dict
from readtalk.data.cache import CachedLatents
from readtalk.data.synthtalk.mouth_reader import pearson, read_mouth
from readtalk.diffusion import (
    ANS_TRAIN_MODES,
    Guidance,
    add_noise,
    ans_train_timesteps,
    condition_dropout,
    flow_matching_loss,
    frame_loss_mask,
    motion_token_weights,
    sample_euler,
    sample_timesteps,
    timestep_schedule,
)
from readtalk.dit import DIT_SIZES, A2VDiT
from readtalk.dit.release import load_dit_release, save_dit_release
from readtalk.errors import ReadtalkError
from readtalk.eval.lipsync import locate_mouth, mouth_darkness
from readtalk.media import contact_sheet, to_uint8, write_image, write_video
from readtalk.train import dist
from readtalk.train.common import fit, start_run
from readtalk.train.mouth_probe import mouth_loss, probe_from_cache
from readtalk.train.optim import OptimConfig, optimizer_steps
from readtalk.train.rolling import (
    model_velocity,
    rolling_window,
    self_rollout,
    teacher_velocity,
)
from readtalk.vae.factorised import load_vae

RELEASE_KIND = "readtalk.dit"
EVAL_T = (0.25, 0.5, 0.75)
EVAL_SEED = 1234


@dataclass(frozen=True)
class DiffusionConfig:
    t_mean: float = 0.0  # logit-normal timestep density
    t_std: float = 1.0
    shift: float = 1.0  # timestep shift (training and sampling)
    ans_mode: str = "scaled"  # ANS training mode (readtalk.diffusion.ANS_TRAIN_MODES)
    p_ans: float = 0.75
    motion_frames: int = 1  # latent frames of motion context
    p_drop_audio: float = 0.1  # condition dropout (classifier-free guidance)
    p_drop_ref: float = 0.0
    p_drop_both: float = 0.1
    sample_steps: int = 8  # Euler steps at inference
    motion_weight: float = 0.0  # extra loss weight on tokens that move (motion_token_weights)
    # > 0: train for the rolling schedule (train.rolling): windows of this many context latents
    # and one new one; p_first of the batches are a video's first window (two new latents)
    rolling_context: int = 0
    p_first: float = 0.1
    # guidance distillation: a DiT release whose Split-CFG velocity (teacher_alpha / _beta) is
    # the target; the student then samples with guidance "none" (one pass per step)
    teacher: str = ""
    teacher_alpha: float = 2.0
    teacher_beta: float = 6.0
    # the teacher's guidance: "split" (a Split-CFG teacher) or "none" (an already distilled one)
    teacher_guidance: str = "split"
    # self rollout (train.rolling): p_self of the rolling windows have a context the model made
    # itself, up to this many latents ahead of the window (0: off), sampled as a session does
    # (rollout_steps, rollout_floor); their target is the teacher's at the true context
    self_rollout: int = 0
    p_self: float = 0.5
    rollout_steps: int = 3
    rollout_floor: float = 0.35
    # the share of the data's target (the true new latent) in a self-rolled window's target,
    # the rest the teacher's velocity at the true context
    rollout_data: float = 0.0
    # > 0: a loss on the velocity error along the latent's mouth directions, fitted on the
    # cache's lip gaps (readtalk.train.mouth_probe), this much of the flow loss's weight
    mouth_weight: float = 0.0


@dataclass(frozen=True)
class DiTRunConfig:
    cache: str = ""  # cache folder (readtalk cache)
    size: str = "tiny"  # DIT_SIZES name; latent_channels / audio_dim come from the cache
    # a DiT release (dit.safetensors or its run / model folder) to start from, e.g. to follow a
    # fine-tuned VAE's latents or new footage; its architecture must match size and cache
    init: str = ""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ema_decay: float = 0.999
    samples: int = 0  # test windows generated, decoded and scored at each evaluation (0: off)
    eval_windows: int = 64  # test windows in the evaluation (0: all)
    train: OptimConfig = field(
        default_factory=lambda: OptimConfig(batch_size=8, lr=3e-4, weight_decay=0.0)
    )

    def validate(self) -> None:

        if not self.cache:
            raise ReadtalkError("no cache given (--cache)")
        if self.size not in DIT_SIZES:
            raise ReadtalkError(f"unknown DiT size {self.size!r} (known: {', '.join(DIT_SIZES)})")
        d = self.diffusion
        if d.ans_mode not in ANS_TRAIN_MODES:
            raise ReadtalkError(
                f"diffusion.ans_mode must be one of {', '.join(ANS_TRAIN_MODES)}, "
                f"got {d.ans_mode!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ReadtalkError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.samples < 0:
            raise ReadtalkError(f"samples must be >= 0, got {self.samples}")
        if self.eval_windows < 0:
            raise ReadtalkError(f"eval_windows must be >= 0, got {self.eval_windows}")
        if d.rolling_context < 0 or not 0.0 <= d.p_first <= 1.0:
            raise ReadtalkError(
                f"diffusion.rolling_context must be >= 0 and p_first in [0, 1], got "
                f"{d.rolling_context} and {d.p_first}"
            )
        if d.teacher_guidance not in ("split", "none"):
            raise ReadtalkError(
                f"diffusion.teacher_guidance must be 'split' or 'none', got {d.teacher_guidance!r}"
            )
        if (d.self_rollout < 0 or not 0.0 <= d.p_self <= 1.0 or d.rollout_steps < 1
                or not 0.0 <= d.rollout_data <= 1.0):  # fmt: skip
            raise ReadtalkError(
                f"diffusion.self_rollout must be >= 0, p_self and rollout_data in [0, 1] and "
                f"rollout_steps >= 1, got {d.self_rollout}, {d.p_self}, {d.rollout_data} and "
                f"{d.rollout_steps}"
            )
        if d.mouth_weight < 0:
            raise ReadtalkError(f"diffusion.mouth_weight must be >= 0, got {d.mouth_weight}")
        if d.self_rollout and not (d.rolling_context and d.teacher):
            raise ReadtalkError(
                "diffusion.self_rollout needs rolling windows (diffusion.rolling_context) and a "
                "teacher (diffusion.teacher) whose velocity at the true context is the target"
            )
        self.train.validate()

    def model_config(self, meta: dict):

        return dataclasses.replace(
            DIT_SIZES[self.size],
            latent_channels=int(meta["latent_shape"][0]),
            audio_dim=int(meta["code_dim"]),
        )


def init_from_release(model, path: str) -> None:
    """Load a DiT release's weights into ``model`` (its latent statistics are not used: the
    run normalises with its own cache's); a different architecture is a one-line error."""

    rel = load_dit_release(path)
    theirs, ours = dataclasses.asdict(rel.model.cfg), dataclasses.asdict(model.cfg)
    diff = sorted(k for k in ours if k != "name" and theirs.get(k) != ours[k])
    if diff:
        pairs = ", ".join(f"{k} {theirs.get(k)} vs {ours[k]}" for k in diff)
        raise ReadtalkError(f"--set init={path}: its DiT differs from this run's ({pairs})")
    model.load_state_dict(rel.model.state_dict())


def _torch_gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


def _timesteps(d: DiffusionConfig, b: int, f: int, motion: int, gen) -> torch.Tensor:
    """(B, 1 + f) training timesteps: ANS with ``motion`` leading motion latents (0: none,
    every frame at one level, the rows a video's first window trains)."""
    if motion == 0:
        t2 = sample_timesteps(b, gen, d.t_mean, d.t_std, d.shift)
        return torch.cat([torch.zeros(b, 1), t2[:, None].expand(b, f)], dim=1)
    return ans_train_timesteps(
        b, f, gen, mode=d.ans_mode, p_ans=d.p_ans, motion_frames=motion, steps=d.sample_steps,
        shift=d.shift, mean=d.t_mean, std=d.t_std,
    )  # fmt: skip


def _window(model, batch: dict, d: DiffusionConfig, gen, part, mine):
    """The training window of ``dit_losses``: ``(batch, m, k, made)``, the batch cut to a
    rolling window (a copy; or as it is), its ``m`` motion latents, the ``k`` latents the model
    rolled out before it (``train.rolling.self_rollout``; 0: none) and the student's input
    latents ``made`` (the true ones, or the model's own context after a rollout)."""
    if not d.rolling_context:
        return batch, min(d.motion_frames, batch["latent"].shape[2] - 1), 0, batch["latent"]
    batch = dict(batch)
    m, k = rolling_window(
        batch, d.rolling_context, d.p_first, gen, rollout=d.self_rollout, p_self=d.p_self
    )  # fmt: skip
    z0 = batch["latent"]
    if not k:
        return batch, m, 0, z0
    made = torch.zeros_like(z0[:, :, k:])
    made[part] = self_rollout(
        getattr(model, "module", model), mine(z0), mine(batch["ref"]), mine(batch["audio"]),
        m, k, gen, steps=d.rollout_steps, shift=d.shift, motion_floor=d.rollout_floor,
    ).cpu()  # fmt: skip
    batch["latent"], batch["audio"] = z0[:, :, k:], batch["audio"][:, k:]
    return batch, m, k, made


def dit_losses(
    model,
    batch: dict,
    d: DiffusionConfig,
    gen: torch.Generator,
    part: slice = slice(None),
    teacher=None,
    probe: torch.Tensor | None = None,
) -> dict:
    """One training step's loss on a cache batch (normalised latents).

    The random draws (rolling window, timesteps, noise, condition dropout) are made for the
    whole ``batch``, on the CPU; the model sees its rows ``part`` (a rank's share under
    torchrun) on its own device, and a share's loss is scaled so that the mean over the shares
    is the whole batch's loss. With ``teacher`` the target is its guided velocity
    (``train.rolling``). With ``probe`` (``fit_mouth_probe``) and ``d.mouth_weight`` the loss
    adds the mouth term (logged as ``mouth``), whose target is always the data's velocity."""

    device = next(model.parameters()).device

    def mine(x: torch.Tensor) -> torch.Tensor:
        return x[part].to(device)

    batch, motion, k, made = _window(model, batch, d, gen, part, mine)
    z0 = batch["latent"]  # (B, C, f, h, w); the true latents
    b, _, f = z0.shape[:3]
    t = _timesteps(d, b, f, motion, gen)  # (B, 1 + f)
    noise = torch.randn(z0.shape, generator=gen)
    zt = add_noise(z0, noise, t[:, 1:])
    ref_keep, audio_keep = condition_dropout(b, gen, d.p_drop_audio, d.p_drop_ref, d.p_drop_both)
    if teacher is not None:  # the student learns the guided velocity of the full condition
        ref_keep, audio_keep = torch.ones_like(ref_keep), torch.ones_like(audio_keep)
    mask = frame_loss_mask(t)  # (B, f)
    if k:  # the made context has no target of its own: the loss is on the new latent
        mask[:, :motion] = False

    target_z0 = z0
    if teacher is not None:  # eps - z0' = the teacher's guided velocity (at the true context)
        g = Guidance(d.teacher_guidance, alpha=d.teacher_alpha, beta=d.teacher_beta)
        vt = teacher_velocity(
            teacher, mine(zt), mine(t), mine(batch["ref"]), mine(batch["audio"]), g
        )  # fmt: skip
        target_z0 = torch.zeros_like(z0)
        target_z0[part] = noise[part] - vt.cpu()
        if k and d.rollout_data:  # part of the way to the true latent itself
            target_z0 = (1.0 - d.rollout_data) * target_z0 + d.rollout_data * z0
    if k:  # the student sees its own context, noised alike
        zt = torch.cat([add_noise(made, noise, t[:, 1:])[:, :, :motion], zt[:, :, motion:]], 2)

    v = model(
        mine(zt),
        mine(t),
        mine(batch["ref"]),
        mine(batch["audio"]),
        ref_mask=mine(ref_keep),
        audio_mask=mine(audio_keep),
    )
    tw = motion_token_weights(z0, d.motion_weight) if d.motion_weight else None
    loss = flow_matching_loss(
        v,
        mine(target_z0),
        mine(noise),
        frame_mask=mine(mask),
        token_weights=None if tw is None else mine(tw),
    )
    out = {}
    if probe is not None and d.mouth_weight:
        out["mouth"] = mouth_loss(v, mine(noise - z0), probe, mine(mask))
        loss = loss + d.mouth_weight * out["mouth"]
    rows = len(range(b)[part])
    if rows < b:  # the loss is normalised by the share's loss frames, not the batch's
        loss = loss * (float(mask[part].sum()) / max(float(mask.sum()), 1.0) * b / rows)
    return {"loss": loss, **out}


@torch.no_grad()
def eval_loss(
    model, data, batch_size: int, limit: int = 0, audio: bool = True, probe=None
) -> float:
    """Mean flow-matching loss over ``data`` at t in EVAL_T (all frames alike, clean
    reference) with noise from a fixed seed, every condition kept: deterministic. With
    ``audio=False`` the speech is dropped (the null speech tokens of classifier-free guidance):
    the loss without the speech minus the loss with it is how much the model uses the speech.
    With ``probe`` the measure is the mouth loss (``mouth_loss``) instead of the flow loss."""

    n = len(data) if not limit else min(limit, len(data))
    gen = torch.Generator().manual_seed(EVAL_SEED)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for a in range(0, n, batch_size):
        batch = data.get(list(range(a, min(a + batch_size, n))))
        z0, ref, speech = (batch[k].to(device) for k in ("latent", "ref", "audio"))
        b, _, f = z0.shape[:3]
        for tv in EVAL_T:
            noise = torch.randn(z0.shape, generator=gen).to(device)
            t = torch.full((b, 1 + f), tv, device=device)
            t[:, 0] = 0.0
            keep = None if audio else torch.zeros(b, dtype=torch.bool, device=device)
            v = model(add_noise(z0, noise, t[:, 1:]), t, ref, speech, audio_mask=keep)
            if probe is None:
                total += float(flow_matching_loss(v, z0, noise)) * b
            else:
                every = torch.ones(b, f, dtype=torch.bool, device=device)
                total += float(mouth_loss(v, noise - z0, probe, every)) * b
            count += b
    return total / max(1, count)


def train_dit(
    cfg: DiTRunConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Train (or resume) the DiT on a cache; returns the release path (None when ``stop_at``
    ended the run early, as an interruption would; ``resume`` continues it)."""

    run = start_run(cfg, out, resume)
    tc = cfg.train
    train = CachedLatents(cfg.cache, "train")
    test = CachedLatents(cfg.cache, "test")
    if len(train) == 0:
        raise ReadtalkError(f"cache {cfg.cache} has no windows in the train split")
    meta = train.meta
    if int(meta["latent_shape"][1]) < 2:
        raise ReadtalkError(
            "the cache's windows have one latent frame; ANS needs >= 2 (frames >= 9)"
        )
    mcfg = cfg.model_config(meta)
    model = A2VDiT(mcfg)
    if cfg.init and not resume:
        init_from_release(model, cfg.init)
        run.log(f"initialised from {cfg.init}")
    model = model.to(run.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    run.log(
        f"DiT {mcfg.name} ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{len(train)} train / {len(test)} test windows, latent {meta['latent_shape']}, "
        f"{dist.world_size()} process(es) on {run.device}"
    )
    part = dist.share(tc.batch_size)
    teacher = None
    if cfg.diffusion.teacher:
        teacher = load_dit_release(cfg.diffusion.teacher).model.to(run.device).eval()
        teacher.requires_grad_(False)
        d = cfg.diffusion
        guided = "Split-CFG" if d.teacher_guidance == "split" else "one-pass"
        run.log(f"target: the {guided} velocity of {d.teacher}")
        if d.self_rollout:
            run.log(
                f"self rollout: {d.p_self:.0%} of the windows after up to {d.self_rollout} "
                f"latents made by the model ({d.rollout_steps} steps, floor {d.rollout_floor})"
            )

    probe = None
    if cfg.diffusion.mouth_weight:
        probe = probe_from_cache(train).to(run.device)
        run.log(f"mouth loss: weight {cfg.diffusion.mouth_weight}, probe fitted on the cache")

    def loss_fn(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        batch = train.sample(tc.batch_size, rng)  # the global batch; this rank's rows: part
        return dit_losses(model, batch, cfg.diffusion, _torch_gen(rng), part, teacher, probe)

    # DDP, or FSDP2 sharding in place (before the optimiser is built); the EMA is sharded alike
    step = dist.parallelize(dist.TrainStep(model, loss_fn), tc)
    ema = dist.parallelize(ema, tc)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    sampler = (
        SampleWriter(run.root / "samples", test, cfg.samples, cfg.diffusion, run.device)
        if cfg.samples and len(test)
        else None
    )

    def evaluate() -> dict[str, float]:
        ema.eval()
        res = {
            "loss": eval_loss(model, test, tc.batch_size, cfg.eval_windows),
            "ema_loss": eval_loss(ema, test, tc.batch_size, cfg.eval_windows),
        }
        # how much the EMA model uses the speech: its loss with the speech dropped, minus ema_loss
        no_audio = eval_loss(ema, test, tc.batch_size, cfg.eval_windows, audio=False)
        res["ema_audio_gain"] = no_audio - res["ema_loss"]
        if probe is not None:  # the held-out error along the mouth's directions
            res["ema_mouth"] = eval_loss(ema, test, tc.batch_size, cfg.eval_windows, probe=probe)
        if sampler is not None:
            res.update(sampler(ema, optimizer_steps(opt)))
        return res

    done = fit(
        run,
        tc,
        model,
        opt,
        step,
        evaluate if len(test) else None,
        to_dict(cfg),
        "train dit",
        progress,
        stop_at,
        resume,
        ema=ema,
        ema_decay=cfg.ema_decay,
    )
    if not done:
        return None
    weights = dist.state_dict(ema)[0]  # every rank takes part (FSDP2 gathers the shards)
    release = run.root / "dit.safetensors"
    if dist.is_main():
        with torch.device("meta"):
            final = A2VDiT(mcfg)
        final.load_state_dict(weights, assign=True)
        save_dit(release, final, meta, cfg.diffusion)
        run.log(f"wrote {release}")
    dist.barrier()
    return release


class SampleWriter:
    """Generate, decode, save and score the first ``n`` test windows of a cache (on ``device``;
    only rank 0 writes files)."""

    def __init__(
        self, folder: Path, test, n: int, d: DiffusionConfig, device: torch.device | str = "cpu"
    ) -> None:

        vae_path = (test.meta.get("vae") or {}).get("path")
        if not vae_path or not Path(vae_path).is_file():
            raise ReadtalkError(
                f"samples need the cache's VAE, which is not at {vae_path!r}; set samples=0"
            )
        self.folder, self.d, self.device = folder, d, torch.device(device)
        self.vae = load_vae(vae_path).to(self.device).eval()
        self.batch = test.get(list(range(min(n, len(test)))))
        gen = torch.Generator().manual_seed(EVAL_SEED + 1)
        self.noise = torch.randn(self.batch["latent"].shape, generator=gen)
        self.test = test
        recon = self._frames(self.batch["latent"])
        # where the VAE's reconstruction of the truth moves its mouth: the fixed spot at which
        # the blur-tolerant darkness score reads both the reconstruction and the samples
        self.centers = [locate_mouth(v) for v in recon]
        self.recon_corr, self.recon_visible = self._mouth(recon)
        self.recon_dark = self._dark(recon)

    @torch.no_grad()
    def _frames(self, z: torch.Tensor) -> np.ndarray:
        """Normalised latents (n, C, f, h, w) -> uint8 videos (n, F, H, W, 3)."""

        z = self.test.denormalize(z.float().cpu()).to(self.device)
        return to_uint8(self.vae.decode(z))  # (n, F, H, W, 3)

    def _mouth(self, videos: np.ndarray) -> tuple[float, float]:
        """Mean Pearson correlation of the read lip gap with the true one (NaN when undefined:
        no ground truth, or no mouth ever seen) and the fraction of frames with a visible
        mouth opening (0 when the model or the VAE draws no mouth at all)."""

        scores, visible = [], []
        for video, gap in zip(videos, self.batch["gap"].numpy(), strict=True):
            read = np.array([read_mouth(f).gap for f in video])
            visible.append(float((read > 0).mean()))
            if not np.isnan(gap).any():
                scores.append(pearson(gap, read))
        scores = [x for x in scores if not np.isnan(x)]
        return (float(np.mean(scores)) if scores else float("nan"), float(np.mean(visible)))

    def _dark(self, videos: np.ndarray) -> float:
        """Mean Pearson correlation of the darkness at each window's mouth spot with the true
        gap: lip sync that blur cannot hide (NaN without ground truth)."""
        scores = []
        for video, gap, c in zip(videos, self.batch["gap"].numpy(), self.centers, strict=True):
            if not np.isnan(gap).any():
                scores.append(pearson(gap, mouth_darkness(video, c)))
        scores = [x for x in scores if not np.isnan(x)]
        return float(np.mean(scores)) if scores else float("nan")

    @torch.no_grad()
    def __call__(self, model, step: int) -> dict[str, float]:
        on = self.device
        z = sample_euler(
            model_velocity(model),
            self.noise.to(on),
            timestep_schedule(self.d.sample_steps, self.d.shift),
            cond={"ref": self.batch["ref"].to(on), "audio": self.batch["audio"].to(on)},
            guidance=Guidance("split"),
        )
        videos = self._frames(z)
        if dist.is_main():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_video(self.folder / f"step_{step:07d}.mp4", videos[0])
            cols = np.linspace(0, videos.shape[1] - 1, 8).round().astype(int)
            write_image(
                self.folder / f"step_{step:07d}.png",
                contact_sheet([v[i] for v in videos for i in cols], cols=len(cols)),
            )
        corr, visible = self._mouth(videos)
        return {
            "sample_mouth_corr": corr,
            "sample_mouth_visible": visible,
            "sample_mouth_dark_corr": self._dark(videos),
            "recon_mouth_corr": self.recon_corr,
            "recon_mouth_visible": self.recon_visible,
            "recon_mouth_dark_corr": self.recon_dark,
        }


def save_dit(path: str | Path, model, meta: dict, diffusion: DiffusionConfig) -> Path:
    """The DiT release (format: ``readtalk.pipeline.save_dit_release``): weights, the latent
    statistics, and the settings inference reads (``steps``, ``motion_latents``, ``clip_frames``,
    ``size``) beside the full training diffusion config."""

    d = dataclasses.asdict(diffusion)
    settings = {
        **d,
        "steps": diffusion.sample_steps,
        "motion_latents": diffusion.motion_frames,
        "clip_frames": int(meta["frames"]),
        "size": 32 * int(meta["latent_shape"][-1]),
    }
    if meta.get("speech_window"):  # per-latent speech codes (speech.rolling)
        settings["speech_window"] = meta["speech_window"]
    if diffusion.rolling_context:
        settings.update(
            schedule="rolling", context_latents=diffusion.rolling_context, motion_from="latents"
        )
    if diffusion.teacher:
        settings["guidance"] = "none"
    return save_dit_release(
        path,
        model,
        latent_mean=meta["latent_mean"],
        latent_std=meta["latent_std"],
        diffusion=settings,
        extra={
            "vae": meta.get("vae", {}),
            "speechae": meta.get("speechae", {}),
            "frames": meta.get("frames"),
        },
    )


def load_dit(path: str | Path):
    """A trained DiT from its release (or a run folder holding one) -> ``(model, info)`` where
    ``info`` has ``latent_mean``/``latent_std`` tensors (C,), ``diffusion`` (DiffusionConfig),
    ``vae``/``speechae`` (dicts with the path and SHA-256 of the weights the cache used)."""

    rel = load_dit_release(path)
    known = {f.name for f in dataclasses.fields(DiffusionConfig)}
    info = {
        "latent_mean": rel.latent_mean,
        "latent_std": rel.latent_std,
        "diffusion": DiffusionConfig(**{k: v for k, v in rel.diffusion.items() if k in known}),
        "vae": rel.extra.get("vae", {}),
        "speechae": rel.extra.get("speechae", {}),
    }
    return rel.model, info
