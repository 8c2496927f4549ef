"""readtalk.diffusion: rectified flow, Euler sampling with guidance, and READ's asynchronous
noise scheduler (ANS). Pure functions of tensors; the network is any ``VelocityModel``.

Training step (sketch)::

    t = ans_train_timesteps(B, f, gen, mode="scaled", p_ans=0.75)    # (B, 1 + f)
    eps = torch.randn(z0.shape, generator=gen)                       # z0 (B, C, f, h, w)
    zt = add_noise(z0, eps, t[:, 1:])
    ref_keep, audio_keep = condition_dropout(B, gen, 0.1, 0.0, 0.1)
    v = model_fn(zt, t, ref_keep, audio_keep, {"ref": ref, "audio": audio})
    loss = flow_matching_loss(v, z0, eps, frame_mask=frame_loss_mask(t))

Long-video inference (sketch)::

    plan = plan_clips(total_frames, clip_latents=16, motion_latents=1)
    clips = iter_clips(model_fn, plan, conds, timestep_schedule(8), (B, C, h, w), generator=gen)
    video = stitch_frames([vae_decode(z) for z in clips], plan)       # total_frames frames
"""

from readtalk.diffusion.ans import (
    ANS_TRAIN_MODES,
    MOTION_MODES,
    AnsTrainMode,
    ClipWindow,
    MotionMode,
    ans_sample,
    ans_train_timesteps,
    iter_clips,
    next_clip,
    next_rolling,
    overlap_frames,
    plan_clips,
    plan_rolling,
    sample_clip,
    stitch_frames,
)
from readtalk.diffusion.flow import (
    DEFAULT_SHIFT,
    DEFAULT_STEPS,
    add_noise,
    expand_timesteps,
    flow_matching_loss,
    frame_loss_mask,
    motion_token_weights,
    noise_from_velocity,
    per_frame_mse,
    sample_timesteps,
    shift_timesteps,
    timestep_density,
    timestep_schedule,
    unshift_timesteps,
    velocity_target,
    x0_from_velocity,
)
from readtalk.diffusion.sampling import (
    DEFAULT_GUIDANCE,
    GUIDANCE_MODES,
    Guidance,
    GuidanceMode,
    StepCallback,
    VelocityModel,
    check_schedule,
    condition_dropout,
    euler_step,
    frame_timesteps,
    guided_velocity,
    joint_cfg,
    sample_euler,
    split_cfg,
    tile_cond,
)

__all__ = [
    "ANS_TRAIN_MODES",
    "DEFAULT_GUIDANCE",
    "DEFAULT_SHIFT",
    "DEFAULT_STEPS",
    "GUIDANCE_MODES",
    "MOTION_MODES",
    "AnsTrainMode",
    "ClipWindow",
    "Guidance",
    "GuidanceMode",
    "MotionMode",
    "StepCallback",
    "VelocityModel",
    "add_noise",
    "ans_sample",
    "ans_train_timesteps",
    "check_schedule",
    "condition_dropout",
    "euler_step",
    "expand_timesteps",
    "flow_matching_loss",
    "frame_loss_mask",
    "frame_timesteps",
    "guided_velocity",
    "iter_clips",
    "joint_cfg",
    "motion_token_weights",
    "next_clip",
    "next_rolling",
    "noise_from_velocity",
    "overlap_frames",
    "per_frame_mse",
    "plan_clips",
    "plan_rolling",
    "sample_clip",
    "sample_euler",
    "sample_timesteps",
    "shift_timesteps",
    "split_cfg",
    "stitch_frames",
    "tile_cond",
    "timestep_density",
    "timestep_schedule",
    "unshift_timesteps",
    "velocity_target",
    "x0_from_velocity",
]
