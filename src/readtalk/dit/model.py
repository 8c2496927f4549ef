"""A2V-DiT: the audio-to-video diffusion transformer of READ (arXiv 2508.03457, §3).

It predicts the flow-matching velocity of noisy video latents from the temporal VAE, given the
clean latent of the portrait (the *reference*) and the SpeechAE codes, one per latent frame.

Shapes: B batch, C latent channels, f latent frames, h x w latent grid, S = h * w tokens per
frame, D model width, A speech-code width.

* **Tokens.** Patch size 1: every latent pixel of every frame is a token, ``Linear(C, D)``
  (shared by the reference and the video). The sequence is ``[reference ; video frames]``,
  handled as ``(B, 1 + f, S, D)`` so that per-frame quantities broadcast over a frame's tokens
  without copies.
* **Blocks** (pre-norm, residual, adaLN-Zero gates): 3-D full self-attention over all
  ``(1 + f) * S`` tokens with QK-RMSNorm and 3-D RoPE (``rope.py``); frame-level
  cross-attention to the speech codes; MLP (GELU-tanh, ratio ``mlp_ratio``).
* **Timesteps** are given per latent frame, ``t: (B, 1 + f)`` in [0, 1] (column 0 is the
  reference, normally 0), as the asynchronous noise scheduler needs. Sinusoidal embedding of
  ``1000 t`` -> MLP -> ``temb (B, 1 + f, D)``; each frame's tokens get that frame's shift /
  scale / gate (9 of them: self-attention, cross-attention, MLP).
* **Output**: final adaLN (shift, scale) + zero-initialised ``Linear(D, C)``; the reference
  frame is dropped before it, so ``forward`` returns ``(B, C, f, h, w)``.

Choices where the paper is silent (all documented here, tested in ``tests/test_dit.py``):

* **Reference temporal position.** ``ref_frame_pos`` (default 0); video frame i (0-based) sits
  at time i + 1, rows and columns at 0..h-1, 0..w-1. RoPE being relative, a learned
  ``ref_type`` vector is also added to the reference tokens, so that the model can tell the
  portrait from clean (t = 0) context frames of a streaming window.
* **Cross-attention.** Only video frames attend to speech: the reference frame's tokens skip
  the cross-attention (it attends to nothing; its residual is untouched), which also saves its
  queries. Each speech code is projected (``Linear(A, D)``, GELU-tanh, ``Linear(D, n D)``,
  computed once per forward) into ``n = audio_tokens`` context tokens. With one token per code
  and ``audio_window = 0`` the softmax has a single key and cross-attention reduces to adding
  a projected code; several tokens let a frame's tokens weigh the speech content differently
  (the mouth can pick other features than the brow). Frame i attends to the tokens of codes
  i - k .. i + k (``k = audio_window``); codes out of range are masked out (never padded with
  fake content), and a learned per-offset vector tells the model which neighbour a token
  comes from. All frames are done in one SDPA call on ``(B * f, S, D)`` queries against
  ``(B * f, (2k + 1) n, D)`` keys; no Python loop over frames.
* **Dropping conditions** (classifier-free guidance): ``audio_mask[b] = False`` replaces row
  b's projected speech tokens by a learned ``null_audio`` (n, D) for every frame;
  ``ref_mask[b] = False`` replaces row b's reference tokens by a learned ``null_ref`` vector
  (positions still come from RoPE). Either way the row no longer depends on the dropped input.
* **adaLN.** ``shared_adaln = True`` (default, LTX-Video / PixArt-alpha "adaLN-single"): one
  ``Linear(D, 9 D)`` on ``SiLU(temb)`` shared by all blocks plus a learned (9, D) table per
  block; at the paper width per-block modulation would cost 38 M parameters per block.
  ``False`` gives DiT's per-block ``Linear(D, 9 D)``. Both are zero-initialised (adaLN-Zero:
  every gate is 0, so a fresh block is the identity), and so is the final linear layer: a
  fresh model outputs exactly 0.

Efficiency: RoPE tables and the window index / mask are cached per ``(f, h, w, device)``
(bypassed while ``torch.compile`` or an ONNX export traces, where they are cheap graph ops
and the sizes stay dynamic); there is no
data-dependent Python control flow in ``forward``. ``model.gradient_checkpointing = True``
recomputes each block in the backward pass. The code is device- and dtype-agnostic: it runs
in float32, under bf16 autocast, or with bf16 weights (RoPE and the QK-norm statistics are
computed in float32).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from readtalk.dit.rope import apply_rope, rope_axis_dims, rope_tables, sequence_positions
from readtalk.errors import ReadtalkError

# --------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of one A2V-DiT."""

    name: str = "custom"
    depth: int = 2
    width: int = 64  # D
    heads: int = 4
    mlp_ratio: float = 4.0
    latent_channels: int = 8  # C: the VAE's latent channels
    audio_dim: int = 8  # A: the SpeechAE code width
    audio_tokens: int = 1  # context tokens per speech code
    audio_window: int = 0  # frame i attends to codes i - k .. i + k
    qk_norm: bool = True  # RMSNorm on queries and keys (per head)
    shared_adaln: bool = True  # adaLN-single (LTX / PixArt) instead of per-block modulation
    freq_dim: int = 256  # sinusoidal timestep embedding width
    rope_theta: float = 10000.0
    ref_frame_pos: float = 0.0  # temporal RoPE position of the reference (video: 1..f)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ReadtalkError(f"DiT width {self.width} is not a multiple of {self.heads} heads")
        try:
            rope_axis_dims(self.width // self.heads)
        except ValueError as e:
            raise ReadtalkError(f"DiT {self.name}: {e}") from None
        if self.audio_window < 0 or self.audio_tokens < 1 or self.depth < 1:
            raise ReadtalkError(f"DiT {self.name}: bad depth / audio_window / audio_tokens")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DiTConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


DIT_SIZES: dict[str, DiTConfig] = {
    # tests only
    "debug": DiTConfig(
        name="debug", depth=2, width=64, heads=4, latent_channels=8, audio_dim=8, audio_tokens=2
    ),
    # CPU training at 128-256 px with the "small" VAE (32 channels) and SpeechAE (64-d codes)
    "tiny": DiTConfig(
        name="tiny",
        depth=6,
        width=192,
        heads=3,
        latent_channels=32,
        audio_dim=64,
        audio_tokens=4,
    ),
    "small": DiTConfig(
        name="small",
        depth=8,
        width=384,
        heads=6,
        latent_channels=32,
        audio_dim=64,
        audio_tokens=4,
    ),
    # one GPU, "base" VAE (64 channels) and SpeechAE (128-d codes)
    "base": DiTConfig(
        name="base",
        depth=12,
        width=768,
        heads=12,
        latent_channels=64,
        audio_dim=128,
        audio_tokens=4,
    ),
    # the paper's ~2B model (LTX-Video 2B transformer layout, LTX VAE's 128 channels)
    "paper": DiTConfig(
        name="paper",
        depth=28,
        width=2048,
        heads=32,
        latent_channels=128,
        audio_dim=128,
        audio_tokens=4,
    ),
}


def num_params(cfg: DiTConfig | str) -> int:
    """Parameter count of a DiT, built on the meta device (no memory is allocated)."""
    if isinstance(cfg, str):
        cfg = DIT_SIZES[cfg]
    with torch.device("meta"):
        model = A2VDiT(cfg)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------- primitives


class RMSNorm(nn.Module):
    """RMSNorm over the last axis; statistics in float32, output in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight.to(x.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of ``1000 t`` (t in [0, 1], any shape) -> (*t.shape, dim) float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = 1000.0 * t.to(torch.float32)[..., None] * freqs
    emb = torch.cat((args.cos(), args.sin()), dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def _norm(x: Tensor, d: int) -> Tensor:
    """LayerNorm without affine over the last axis of width ``d`` (an int, not ``x.shape[-1]``,
    so that a traced graph keeps it constant: the TorchScript ONNX exporter needs that)."""
    return F.layer_norm(x, (d,), eps=1e-6)


class _Tables(NamedTuple):
    cos: Tensor  # (L, head_dim / 2) float32
    sin: Tensor
    win_idx: Tensor | None  # (f, 2k + 1) index into the code sequence padded by k
    win_mask: Tensor | None  # (f, (2k + 1) n) bool, True = a real code


# ------------------------------------------------------------------------------------ attention


class SelfAttention(nn.Module):
    """Full self-attention over the whole (B, L, D) sequence with QK-norm and 3-D RoPE."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d, dh = cfg.width, cfg.head_dim
        self.heads = cfg.heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.q_norm = RMSNorm(dh) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dh) if cfg.qk_norm else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # (B, L, D)
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q = apply_rope(self.q_norm(q).transpose(1, 2), cos, sin).to(v.dtype)
        k = apply_rope(self.k_norm(k).transpose(1, 2), cos, sin).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class FrameCrossAttention(nn.Module):
    """Frame-level cross-attention: row r of ``x`` (R, S, D) attends to row r of the context
    ``ctx`` (R, M, D) only, with R = B * f (one row per batch item and video frame)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d, dh = cfg.width, cfg.head_dim
        self.heads = cfg.heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.q_norm = RMSNorm(dh) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dh) if cfg.qk_norm else nn.Identity()

    def forward(self, x: Tensor, ctx: Tensor, mask: Tensor | None = None) -> Tensor:
        r, s, d = x.shape
        m, dh = ctx.shape[1], d // self.heads
        q = self.q(x).view(r, s, self.heads, dh)
        k, v = self.kv(ctx).view(r, m, 2, self.heads, dh).unbind(2)
        q = self.q_norm(q).transpose(1, 2).to(v.dtype)
        k = self.k_norm(k).transpose(1, 2).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(r, s, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, frame-level cross-attention, MLP (pre-norm)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = self.width = cfg.width
        self.attn = SelfAttention(cfg)
        self.cross = FrameCrossAttention(cfg)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d)
        )
        if cfg.shared_adaln:
            self.ada = None
            self.ada_table = nn.Parameter(torch.zeros(9, d))
        else:
            self.ada = nn.Linear(d, 9 * d)
            self.ada_table = None

    def forward(
        self, x: Tensor, c: Tensor, ctx: Tensor, mask: Tensor | None, cos: Tensor, sin: Tensor
    ) -> Tensor:
        """x (B, 1+f, S, D); c: the shared modulation (B, 1+f, 9, D), or SiLU(temb)
        (B, 1+f, D) without ``shared_adaln``; ctx (B*f, M, D); mask (B*f, 1, 1, M) or None."""
        b, f1, s, d = x.shape
        mod = (
            c + self.ada_table.to(c.dtype)
            if self.ada is None
            else self.ada(c).unflatten(-1, (9, d))
        )
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = mod.unsqueeze(2).unbind(3)  # (B, 1+f, 1, D)

        h = _modulate(_norm(x, self.width), sh1, sc1)
        x = x + g1 * self.attn(h.reshape(b, f1 * s, d), cos, sin).view(b, f1, s, d)

        vid = x[:, 1:]
        h = _modulate(_norm(vid, self.width), sh2[:, 1:], sc2[:, 1:])
        out = self.cross(h.reshape(b * (f1 - 1), s, d), ctx, mask).view(b, f1 - 1, s, d)
        x = torch.cat((x[:, :1], vid + g2[:, 1:] * out), dim=1)

        h = _modulate(_norm(x, self.width), sh3, sc3)
        return x + g3 * self.mlp(h)


# ---------------------------------------------------------------------------------------- model


class A2VDiT(nn.Module):
    """The audio-to-video DiT. See the module docstring for the design."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c, n = cfg.width, cfg.latent_channels, cfg.audio_tokens
        self.gradient_checkpointing = False

        self.patch_embed = nn.Linear(c, d)
        self.ref_type = nn.Parameter(torch.zeros(d))
        self.null_ref = nn.Parameter(torch.zeros(d))

        self.t_embed = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.t_mod = nn.Linear(d, 9 * d) if cfg.shared_adaln else None

        self.audio_proj = nn.Sequential(
            nn.Linear(cfg.audio_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, n * d)
        )
        self.null_audio = nn.Parameter(torch.zeros(n, d))
        k = cfg.audio_window
        self.audio_offset = nn.Parameter(torch.zeros(2 * k + 1, 1, d)) if k else None

        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))

        self.final_mod = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, c)

        self._tables_cache: dict[tuple, _Tables] = {}
        self.reset_parameters()

    # -------------------------------------------------------------------------------- set-up

    def reset_parameters(self) -> None:
        """DiT's initialisation: Xavier-uniform linear layers, N(0, 0.02) timestep MLP and
        learned vectors, zero adaLN modulation and zero final layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        for m in self.t_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        for p in (self.ref_type, self.null_ref, self.null_audio, self.audio_offset):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        zero = [self.t_mod, self.final_mod, self.final] + [b.ada for b in self.blocks]
        for m in zero:
            if m is not None:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        for b in self.blocks:
            if b.ada_table is not None:
                nn.init.zeros_(b.ada_table)

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): drop cached tables
        self._tables_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _make_tables(self, f: int, h: int, w: int, device: torch.device) -> _Tables:
        cfg = self.cfg
        pos = sequence_positions(f, h, w, cfg.ref_frame_pos, device=device)
        cos, sin = rope_tables(pos, cfg.head_dim, cfg.rope_theta)
        k = cfg.audio_window
        if not k:
            return _Tables(cos, sin, None, None)
        off = torch.arange(2 * k + 1, device=device)
        idx = torch.arange(f, device=device)[:, None] + off  # into codes padded by k
        valid = (idx >= k) & (idx < f + k)
        return _Tables(cos, sin, idx, valid.repeat_interleave(cfg.audio_tokens, dim=1))

    def tables(self, f: int, h: int, w: int, device: torch.device) -> _Tables:
        """RoPE tables and audio-window index / mask for f frames of h x w, cached (not
        while traced: ``torch.compile`` or an ONNX export, where they are graph ops and the
        sizes stay dynamic)."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self._make_tables(f, h, w, device)
        key = (f, h, w, torch.device(device))
        hit = self._tables_cache.get(key)
        if hit is None:
            # plain tensors even when first called under inference_mode, so that a later
            # training step may save them for backward
            with torch.inference_mode(False), torch.no_grad():
                hit = self._make_tables(f, h, w, device)
            self._tables_cache[key] = hit
        return hit

    # ------------------------------------------------------------------------------- forward

    def audio_context(
        self, audio: Tensor, audio_mask: Tensor | None = None, tables: _Tables | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Speech codes (B, f, A) -> per-frame context (B * f, (2k + 1) n, D) and its key
        mask (B * f, 1, 1, (2k + 1) n) (None when ``audio_window`` is 0)."""
        b, f, _ = audio.shape
        d, n, k = self.cfg.width, self.cfg.audio_tokens, self.cfg.audio_window
        dtype = self.patch_embed.weight.dtype
        ctx = self.audio_proj(audio.to(dtype)).unflatten(-1, (n, d))  # (B, f, n, D)
        if audio_mask is not None:
            null = self.null_audio.to(ctx.dtype).expand_as(ctx)
            ctx = torch.where(audio_mask.view(b, 1, 1, 1), ctx, null)
        if not k:
            return ctx.reshape(b * f, n, d), None
        if tables is None:
            tables = self.tables(f, 1, 1, audio.device)
        ctx = F.pad(ctx, (0, 0, 0, 0, k, k))[:, tables.win_idx]  # (B, f, 2k+1, n, D)
        ctx = ctx + self.audio_offset.to(ctx.dtype)
        m = ctx.shape[2] * n
        mask = tables.win_mask.expand(b, f, m).reshape(b * f, 1, 1, m)
        return ctx.reshape(b * f, m, d), mask

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        ref: Tensor,
        audio: Tensor,
        ref_mask: Tensor | None = None,
        audio_mask: Tensor | None = None,
    ) -> Tensor:
        """Predict the velocity of the noisy video latents.

        x (B, C, f, h, w) noisy video latents; t (B, 1 + f) per-frame timesteps in [0, 1]
        (column 0: the reference); ref (B, C, 1, h, w) clean reference latent; audio (B, f, A)
        speech codes; ref_mask / audio_mask (B,) bool, True = keep (default: all kept).
        Returns (B, C, f, h, w) in x's dtype.
        """
        cfg = self.cfg
        b, c, f, h, w = x.shape
        s, d = h * w, cfg.width
        if c != cfg.latent_channels:
            raise ReadtalkError(f"DiT {cfg.name} takes {cfg.latent_channels} channels, got {c}")
        if tuple(t.shape) != (b, 1 + f):
            raise ReadtalkError(
                f"timesteps must be (B, 1 + f) = {(b, 1 + f)}, got {tuple(t.shape)}"
            )
        if tuple(ref.shape) != (b, c, 1, h, w):
            raise ReadtalkError(f"reference must be {(b, c, 1, h, w)}, got {tuple(ref.shape)}")
        if tuple(audio.shape) != (b, f, cfg.audio_dim):
            raise ReadtalkError(
                f"speech codes must be {(b, f, cfg.audio_dim)}, got {tuple(audio.shape)}"
            )
        dtype = self.patch_embed.weight.dtype
        tab = self.tables(f, h, w, x.device)

        # tokens: (B, 1 + f, S, D)
        vid = self.patch_embed(x.to(dtype).permute(0, 2, 3, 4, 1).reshape(b, f, s, c))
        r = self.patch_embed(ref.to(dtype).permute(0, 2, 3, 4, 1).reshape(b, 1, s, c))
        if ref_mask is not None:
            r = torch.where(ref_mask.view(b, 1, 1, 1), r, self.null_ref.to(r.dtype))
        r = r + self.ref_type.to(r.dtype)
        # the residual stream stays in the weights' dtype (float32 under autocast)
        tok = torch.cat((r, vid), dim=1).to(dtype)

        # per-frame conditioning
        temb = self.t_embed(timestep_embedding(t, cfg.freq_dim).to(dtype))  # (B, 1 + f, D)
        cond = F.silu(temb)
        mod = self.t_mod(cond).unflatten(-1, (9, d)) if self.t_mod is not None else cond
        ctx, mask = self.audio_context(audio, audio_mask, tab)

        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tok = checkpoint(block, tok, mod, ctx, mask, tab.cos, tab.sin, use_reentrant=False)
            else:
                tok = block(tok, mod, ctx, mask, tab.cos, tab.sin)

        # output: video frames only
        shift, scale = self.final_mod(cond[:, 1:]).unsqueeze(2).chunk(2, dim=-1)
        out = self.final(_modulate(_norm(tok[:, 1:], d), shift, scale))  # (B, f, S, C)
        return out.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3).to(x.dtype)
