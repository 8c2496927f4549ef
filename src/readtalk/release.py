"""Release I/O: the files a trained model is shipped and loaded as.

A **release file** is one safetensors file whose metadata holds ``kind`` (which network, e.g.
``"readtalk.dit"``), ``config`` (its config dataclass as JSON) and any other JSON entries; it
may be stored in half precision (``readtalk export``) and is read back as float32. A **model
folder** holds ``vae.safetensors``, ``speechae.safetensors``, ``dit.safetensors`` and optionally
``pipeline.json`` (the model's generation defaults). Every write is atomic: a partial name,
then renamed into place, so an interrupted save never leaves a broken file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from readtalk.errors import ReadtalkError

MODEL_FILES = ("vae", "speechae", "dit")  # a model folder's <name>.safetensors


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_release(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    kind: str,
    config_json: str,
    extra: dict[str, str] | None = None,
) -> Path:
    """Slim release weights: safetensors with ``kind`` and the config JSON in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {"kind": kind, "config": config_json, **(extra or {})}
    return write_safetensors(path, tensors, meta)


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a safetensors file atomically (a partial name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, as stored."""
    path = Path(path)
    if not path.is_file():
        raise ReadtalkError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except Exception as e:
        raise ReadtalkError(f"{path} is not a safetensors weights file ({e})") from None


def release_path(path: str | os.PathLike, filename: str) -> Path:
    """A release file given directly, or as ``filename`` inside the run folder given."""
    p = Path(path)
    return p / filename if p.is_dir() else p


def upcast(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32 (releases may be stored in half precision, see
    ``readtalk export``); other tensors unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def load_release(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a release file written by ``save_release``; checks its kind."""
    tensors, meta = read_safetensors(path)
    tensors = {k: upcast(v) for k, v in tensors.items()}  # half-precision releases (export)
    if meta.get("kind") != kind:
        raise ReadtalkError(f"{path} holds {meta.get('kind', 'unknown')!r} weights, not {kind!r}")
    return tensors, meta


def peek_safetensors(path: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file, without reading any tensor."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ReadtalkError(f"{path} is not a safetensors file ({msg})") from None


# ----------------------------------------------------------------------------- model folders


def model_files(root: str | os.PathLike) -> dict[str, Path]:
    """The weights files of a model folder, by part: ``{"vae": root/vae.safetensors, ...}``."""
    return {k: Path(root) / f"{k}.safetensors" for k in MODEL_FILES}


def read_model_folder(root: str | os.PathLike) -> tuple[dict[str, Path], dict[str, Any]]:
    """A model folder's weights files and its ``pipeline.json`` defaults ({} without one);
    one-line errors for a missing folder or file and for a broken ``pipeline.json``."""
    root = Path(root)
    if not root.is_dir():
        raise ReadtalkError(f"model folder not found: {root}")
    files = model_files(root)
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise ReadtalkError(f"model folder {root} lacks {', '.join(missing)}")
    defaults: Any = {}
    pj = root / "pipeline.json"
    if pj.is_file():
        try:
            defaults = json.loads(pj.read_text())
        except json.JSONDecodeError as e:
            raise ReadtalkError(f"{pj}: not valid JSON ({e})") from None
        if not isinstance(defaults, dict):
            raise ReadtalkError(f"{pj}: must hold a JSON object")
    return files, defaults


def default_model_dir() -> Path:
    """Where the demo model ships: ``readtalk/assets/demo`` inside the package."""
    return Path(__file__).resolve().parent / "assets" / "demo"


def has_model(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds the three weights files of a model folder."""
    return all(p.is_file() for p in model_files(root).values())
