"""Rectified flow: the noising path, timestep densities and schedules, the training objective.

Conventions (the whole ``readtalk.diffusion`` package):

* latents ``(B, C, f, h, w)``; frame axis 2. ``t`` is a float in ``[0, 1]``: 0 = clean data,
  1 = pure noise. A timestep tensor is either per sample ``(B,)`` or per latent frame ``(B, f)``
  (the asynchronous noise scheduler gives every frame its own level).
* the DiT sequence is ``[reference ; video frames]``; timesteps handed to a model are
  ``(B, r + f)`` with the ``r`` (normally 1) reference columns at 0, while latents, noise and
  predicted velocities cover the ``f`` video frames only.

Rectified flow (Liu et al. 2022, arXiv 2209.03003; Lipman et al. 2022, arXiv 2210.02747), in the
SD3 parametrisation (Esser et al. 2024, arXiv 2403.03206, §2)::

    z_t = (1 - t) z_0 + t eps,   eps ~ N(0, I),   target velocity v = dz_t/dt = eps - z_0

Training timesteps follow SD3's logit-normal density (§3.1) with the resolution shift of SD3
§5.3.2 / Flux, ``t' = s t / (1 + (s - 1) t)``; sampling uses the same shift on a uniform grid.
Everything here is a pure function: randomness only through an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from readtalk.errors import ReadtalkError

DEFAULT_STEPS = 8  # Euler steps at inference (READ studies 4-10)
DEFAULT_SHIFT = 1.0  # timestep shift (1 = none); training and sampling should agree

__all__ = [
    "DEFAULT_SHIFT",
    "DEFAULT_STEPS",
    "add_noise",
    "expand_timesteps",
    "flow_matching_loss",
    "frame_loss_mask",
    "noise_from_velocity",
    "per_frame_mse",
    "sample_timesteps",
    "shift_timesteps",
    "timestep_density",
    "timestep_schedule",
    "unshift_timesteps",
    "velocity_target",
    "x0_from_velocity",
]


def _check_shift(shift: float) -> float:
    shift = float(shift)
    if not math.isfinite(shift) or shift <= 0:
        raise ReadtalkError(f"timestep shift must be a positive number, got {shift}")
    return shift


# ----------------------------------------------------------------------------------- timesteps


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """SD3/Flux timestep shift ``t' = s t / (1 + (s - 1) t)`` (Esser et al. 2024, eq. 23).

    A monotone bijection of ``[0, 1]`` fixing 0 and 1; ``s > 1`` moves time towards noise
    (more steps / more training at high noise), ``s = 1`` is the identity.
    """
    shift = _check_shift(shift)
    if shift == 1.0:
        return t.clone()
    return shift * t / (1.0 + (shift - 1.0) * t)


def unshift_timesteps(t: Tensor, shift: float) -> Tensor:
    """Inverse of ``shift_timesteps``: ``t = t' / (s - (s - 1) t')``."""
    shift = _check_shift(shift)
    if shift == 1.0:
        return t.clone()
    return t / (shift - (shift - 1.0) * t)


def sample_timesteps(
    n: int,
    generator: torch.Generator | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = DEFAULT_SHIFT,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``n`` training timesteps from the shifted logit-normal density. Returns ``(n,)``.

    ``u ~ N(mean, std)``, ``t = sigmoid(u)`` (SD3 §3.1, "lognorm(m, s)"), then
    ``shift_timesteps(t, shift)``. The median is ``shift_timesteps(sigmoid(mean), shift)``.
    Values lie in the open interval (0, 1): they are clamped to the representable numbers
    nearest to 0 and 1 in ``dtype`` (only reachable with a huge ``std``).
    """
    if n < 0:
        raise ReadtalkError(f"number of timesteps must be >= 0, got {n}")
    if not (math.isfinite(std) and std > 0 and math.isfinite(mean)):
        raise ReadtalkError(f"logit-normal needs a finite mean and std > 0, got {mean}, {std}")
    if device is None and generator is not None:
        device = generator.device
    u = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
    t = shift_timesteps(torch.sigmoid(u.double() * std + mean), shift).to(dtype)
    lo = torch.finfo(dtype).tiny
    hi = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype)).item()
    return t.clamp(lo, hi)


def timestep_density(
    t: Tensor, mean: float = 0.0, std: float = 1.0, shift: float = DEFAULT_SHIFT
) -> Tensor:
    """Probability density of ``sample_timesteps`` at ``t`` in (0, 1) (same shape as ``t``).

    With ``t0 = unshift(t)``: ``p(t) = N(logit t0; mean, std) / (t0 (1 - t0)) * dt0/dt`` and
    ``dt0/dt = s / (s - (s - 1) t)^2``.
    """
    shift = _check_shift(shift)
    t = t.double()
    t0 = unshift_timesteps(t, shift)
    logit = torch.log(t0) - torch.log1p(-t0)
    gauss = torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    jac = shift / (shift - (shift - 1.0) * t) ** 2
    return gauss / (t0 * (1 - t0)) * jac


def timestep_schedule(
    steps: int = DEFAULT_STEPS,
    shift: float = DEFAULT_SHIFT,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sampling schedule: ``steps + 1`` times decreasing strictly from 1 to 0. Returns
    ``(steps + 1,)``.

    A uniform grid ``1, 1 - 1/n, ..., 0`` passed through ``shift_timesteps`` (the SD3 / Flux
    sampling schedule). Endpoints are exactly 1 and 0.
    """
    if int(steps) != steps or steps < 1:
        raise ReadtalkError(f"sampling steps must be a positive integer, got {steps}")
    grid = torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64)
    return shift_timesteps(grid, shift).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------- noise path


def expand_timesteps(t: Tensor | float, x: Tensor) -> Tensor:
    """View timesteps so they broadcast against latents ``x (B, C, f, ...)``.

    ``t`` may be a number or 0-d tensor, per sample ``(B,)`` -> ``(B, 1, 1, ...)``, or per frame
    ``(B, f)`` -> ``(B, 1, f, 1, ...)``. Cast to ``x``'s dtype and device.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    b = x.shape[0]
    if t.ndim == 1:
        if t.shape[0] != b:
            raise ValueError(f"timesteps {tuple(t.shape)} do not match batch {b}")
        return t.view(b, *([1] * (x.ndim - 1)))
    if t.ndim == 2:
        if x.ndim < 3 or tuple(t.shape) != (b, x.shape[2]):
            raise ValueError(
                f"per-frame timesteps {tuple(t.shape)} do not match latents {tuple(x.shape)} "
                "(expected (B, f) with f on axis 2)"
            )
        return t.view(b, 1, t.shape[1], *([1] * (x.ndim - 3)))
    raise ValueError(f"timesteps must be a number, (B,) or (B, f); got {tuple(t.shape)}")


def add_noise(z0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """Rectified-flow interpolation ``z_t = (1 - t) z_0 + t eps``. ``z0, noise (B, C, f, h, w)``,
    ``t`` a number, ``(B,)`` or per frame ``(B, f)``."""
    if z0.shape != noise.shape:
        raise ValueError(f"data {tuple(z0.shape)} and noise {tuple(noise.shape)} differ")
    te = expand_timesteps(t, z0)
    return (1 - te) * z0 + te * noise


def velocity_target(z0: Tensor, noise: Tensor) -> Tensor:
    """The regression target ``v = eps - z_0`` (= dz_t/dt along the straight path)."""
    return noise - z0


def x0_from_velocity(zt: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """Clean estimate from a velocity: ``z_0 = z_t - t v``."""
    return zt - expand_timesteps(t, zt) * v


def noise_from_velocity(zt: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """Noise estimate from a velocity: ``eps = z_t + (1 - t) v``."""
    return zt + (1 - expand_timesteps(t, zt)) * v


# ---------------------------------------------------------------------------------- objective


def per_frame_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per sample and frame: ``(B, C, f, ...)`` -> ``(B, f)`` (float32+)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim < 3:
        raise ValueError(f"latents must be (B, C, f, ...), got {tuple(pred.shape)}")
    err = (pred.float() - target.float()).pow(2)  # (B, C, f, ...)
    return err.mean(dim=[1, *range(3, err.ndim)])  # (B, f)


def frame_loss_mask(t: Tensor, ref_frames: int = 1) -> Tensor:
    """Which video frames carry a loss, from the model's timesteps ``t (B, r + f)``.

    Returns ``(B, f)`` bool (the reference columns are dropped, matching a prediction of the
    ``f`` video frames): True where ``t > 0``. A clean frame (the reference, or a motion frame
    at ``t = 0`` in ANS mode "zero") has an unpredictable target ``eps - z_0`` (its noise is
    not in the input) and is left out.
    """
    if t.ndim != 2 or not 0 <= ref_frames < t.shape[1]:
        raise ValueError(f"timesteps must be (B, r + f) with r = {ref_frames}, got {t.shape}")
    return t[:, ref_frames:] > 0


def flow_matching_loss(
    pred: Tensor,
    z0: Tensor,
    noise: Tensor,
    *,
    frame_mask: Tensor | None = None,
    frame_weights: Tensor | None = None,
    token_weights: Tensor | None = None,
) -> Tensor:
    """Rectified-flow (conditional flow matching) loss: weighted MSE to ``eps - z_0``.

    ``pred, z0, noise (B, C, f, h, w)``. ``frame_mask`` (bool) and ``frame_weights`` (float)
    broadcast to ``(B, f)``: ``(B, f)``, ``(f,)``, or ``(B, 1)`` per sample. Frames are weighted by
    ``w = mask * weights`` and the loss is ``sum(w * mse_frame) / sum(w)`` (a scalar; 0 when
    every weight is 0). Use ``frame_loss_mask`` to leave out the reference / clean frames.
    ``token_weights (B, 1, f, h, w)`` weigh the tokens inside each frame (a weighted mean, so
    a frame's scale is kept; see ``motion_token_weights``).
    """
    if token_weights is None:
        mse = per_frame_mse(pred, velocity_target(z0, noise))  # (B, f)
    else:
        err = (pred.float() - velocity_target(z0, noise).float()).pow(2)  # (B, C, f, h, w)
        tw = token_weights.to(device=err.device, dtype=err.dtype)
        mse = (err * tw).mean(dim=(1, 3, 4)) / tw.mean(dim=(1, 3, 4)).clamp_min(1e-12)
    w = torch.ones_like(mse)
    for name, m in (("frame_mask", frame_mask), ("frame_weights", frame_weights)):
        if m is None:
            continue
        try:
            w = w * torch.broadcast_to(m.to(device=mse.device, dtype=mse.dtype), mse.shape)
        except RuntimeError:
            raise ValueError(
                f"{name} {tuple(m.shape)} does not broadcast to (B, f) = {tuple(mse.shape)}"
            ) from None
    return (mse * w).sum() / w.sum().clamp_min(torch.finfo(mse.dtype).tiny)


def motion_token_weights(z0: Tensor, strength: float) -> Tensor:
    """Loss weights (B, 1, f, h, w) that favour the tokens that change inside a window.

    A token's motion is its mean absolute distance (over channels) from the window's mean
    latent frame, divided by the sample's mean motion; the weight is ``1 + strength * motion``
    (capped at ``1 + 4 strength``). Lips, blinks and head edges move; hair, clothes and the
    background do not, yet they are most of the tokens, so an unweighted loss is dominated by
    what the reference frame already gives away. The same idea as the lip/face-mask loss
    weights of audio-driven diffusion models, here without a mask: it needs no landmarks.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    d = (z0 - z0.mean(dim=2, keepdim=True)).abs().mean(dim=1, keepdim=True)  # (B, 1, f, h, w)
    d = d / d.mean(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
    return 1.0 + strength * d.clamp(max=4.0)
