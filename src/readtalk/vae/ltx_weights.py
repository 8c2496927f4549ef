"""Reading VAE weights from disk: our own checkpoints (what ``VideoVAE.save`` writes) and the
pretrained LTX-Video VAE, from a diffusers folder or an original LTX-Video single file, entirely
offline.

Each reader returns ``Weights``: the network's config, its state dict in diffusers'
``AutoencoderKLLTXVideo`` naming and where it came from; ``VideoVAE.load`` and
``VideoVAE.from_pretrained`` build the network and ``assign_weights`` fills it. This module
does not import ``readtalk.vae.model`` (which imports it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from readtalk.errors import ReadtalkError
from readtalk.release import peek_safetensors
from readtalk.vae.codec import READTALK_FORMAT, assign_state
from readtalk.vae.config import VAE_PRESETS, VAEConfig, _resolve


class Weights(NamedTuple):
    """A VAE's config and state dict, read from ``source`` (for messages)."""

    config: VAEConfig
    state: dict[str, Tensor]
    source: str


def read_checkpoint(path: str | os.PathLike) -> Weights:
    """Read a file written by ``VideoVAE.save`` (use ``read_pretrained`` for LTX weights)."""
    path = _require(path)
    keys, meta = peek_safetensors(path)
    if meta.get("format") != READTALK_FORMAT:
        raise ReadtalkError(
            f"{path} is not a readtalk VAE checkpoint (no {READTALK_FORMAT!r} metadata); "
            "use VideoVAE.from_pretrained for LTX-Video weights"
        )
    try:
        config = VAEConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, AttributeError) as e:
        raise ReadtalkError(f"{path}: unreadable VAE config in metadata ({e})") from None
    return Weights(config, _read(path, keys), str(path))


def read_pretrained(path: str | os.PathLike, preset: VAEConfig | str = "ltx") -> Weights:
    """Read pretrained LTX-Video VAE weights from a local path (see ``VideoVAE.from_pretrained``);
    never downloads. ``preset`` defines the network of an original single file."""
    path = _require(path, allow_dir=True)
    if path.is_dir():
        return _read_folder(path, preset)
    keys, meta = peek_safetensors(path)
    if meta.get("format") == READTALK_FORMAT:
        return read_checkpoint(path)
    return _read_single_file(path, keys, _resolve(preset))


def _read_folder(path: Path, preset: VAEConfig | str) -> Weights:
    folder = path
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise ReadtalkError(
            f"{path} has no config.json (nor vae/config.json): not a diffusers folder"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReadtalkError(f"{folder / 'config.json'} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ReadtalkError(f"{folder / 'config.json'} is not a JSON object")
    kind = config.get("_class_name")
    files = _weight_files(folder)
    if kind == "CausalVideoAutoencoder":  # the original LTX-Video repo's own VAE folder
        if len(files) != 1:
            raise ReadtalkError(f"{folder} needs exactly one .safetensors weight file")
        keys, _ = peek_safetensors(files[0])
        return _read_single_file(files[0], keys, _resolve(preset))
    if kind not in (None, "AutoencoderKLLTXVideo"):
        raise ReadtalkError(
            f"{folder / 'config.json'} describes a {kind}, not an AutoencoderKLLTXVideo"
        )
    vae_config = VAEConfig.from_diffusers(config)
    named = [p for p in VAE_PRESETS.values() if p.same_layout(vae_config)]
    if named:
        vae_config = dataclasses.replace(vae_config, name=named[0].name)
    if not files:
        raise ReadtalkError(
            f"{folder} has no diffusion_pytorch_model*.safetensors (PyTorch .bin weights "
            "are not supported; convert them to safetensors)"
        )
    state: dict[str, Tensor] = {}
    for file in files:
        keys, _ = peek_safetensors(file)
        state.update(_read(file, keys))
    return Weights(vae_config, state, str(folder))


def _read_single_file(path: Path, keys: list[str], config: VAEConfig) -> Weights:
    if any(k.startswith("vae.") for k in keys):  # a whole model: read the VAE tensors only
        state = _read(path, [k for k in keys if k.startswith("vae.")])
    elif any(k.startswith(("encoder.", "decoder.")) for k in keys):
        if any(".resnets." in k or ".mid_block." in k for k in keys):  # diffusers layout
            return Weights(config, _read(path, keys), str(path))
        state = {f"vae.{k}": v for k, v in _read(path, keys).items()}  # a standalone VAE
    else:
        hint = ""
        if any("transformer_blocks" in k or "diffusion_model" in k for k in keys):
            hint = " (it looks like a transformer checkpoint)"
        raise ReadtalkError(f"{path} has no VAE weights{hint}")
    return Weights(config, _convert_original(state, path), str(path))


def assign_weights(
    ae: nn.Module,
    config: VAEConfig,
    state: dict[str, Tensor],
    source: str,
    dtype: torch.dtype | None,
) -> None:
    """Assign ``state`` (of ``config``) to a meta-device ``AutoencoderKLLTXVideo`` after checking
    every shape; missing latent statistics mean identity."""
    expected = ae.state_dict()
    c = config.latent_channels
    # Checkpoints without statistics (ours before fitting, some conversions) mean identity.
    if "latents_mean" not in state and "latents_mean" in expected:
        state["latents_mean"] = torch.zeros(c)
    if "latents_std" not in state and "latents_std" in expected:
        state["latents_std"] = torch.ones(c)
    assign_state(ae, state, source, f"{config.name!r} VAE", dtype)


def _require(path: str | os.PathLike, *, allow_dir: bool = False) -> Path:
    p = Path(path)
    if not p.exists():
        raise ReadtalkError(f"VAE checkpoint not found: {p}")
    if p.is_dir() and not allow_dir:
        raise ReadtalkError(f"VAE checkpoint is a folder, expected a .safetensors file: {p}")
    if p.is_file() and p.stat().st_size == 0:
        raise ReadtalkError(f"VAE checkpoint is empty: {p}")
    return p


def _read(path: Path, keys: list[str]) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReadtalkError(f"cannot read tensors from {path} ({msg})") from None


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of a diffusers folder: one file, shards, or one dtype variant."""
    plain = folder / "diffusion_pytorch_model.safetensors"
    if plain.is_file():
        return [plain]
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise ReadtalkError(f"{index} is not a valid shard index ({e})") from None
        return [folder / s for s in shards]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) <= 1:
        return found
    for variant in ("fp32", "bf16", "fp16"):
        p = folder / f"diffusion_pytorch_model.{variant}.safetensors"
        if p in found:
            return [p]
    raise ReadtalkError(f"{folder} has several .safetensors files; cannot tell which is the VAE")


def _convert_original(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Original LTX-Video key names (``vae.``-prefixed) -> diffusers ``AutoencoderKLLTXVideo``.

    Uses diffusers' own single-file converter (a pure renaming, no download), after refusing
    the 0.9.1+ VAEs whose decoders it would map onto a design we do not run.
    """
    # Imported here on purpose (lazily): only this conversion needs diffusers' loaders.
    from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

    if "vae.decoder.last_time_embedder.timestep_embedder.linear_1.weight" in state or any(
        "last_scale_shift_table" in k for k in state
    ):
        raise ReadtalkError(
            f"{path} holds an LTX-Video 0.9.1+ VAE (timestep-conditioned decoder); "
            "readtalk supports the 0.9.0 VAE (ltx-video-2b-v0.9)"
        )
    conv_out = state.get("vae.encoder.conv_out.conv.weight")
    if conv_out is None:
        raise ReadtalkError(f"{path} has VAE keys but no encoder.conv_out: not an LTX-Video VAE")
    if conv_out.dim() == 5 and conv_out.shape[1] == 2048:
        raise ReadtalkError(
            f"{path} holds an LTX-Video 0.9.5+ VAE; readtalk supports the 0.9.0 VAE"
        )
    return convert_ltx_vae_checkpoint_to_diffusers(dict(state))
