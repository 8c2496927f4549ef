"""``readtalk export``: trained weights gathered into one model folder (for ``from_pretrained``).

A model folder holds ``vae.safetensors``, ``speechae.safetensors``, ``dit.safetensors`` and
``pipeline.json`` (sampling defaults). Export copies the three release files, by default storing
their floating-point weights in float16 (half the bytes; every loader reads them back as
float32), keeps normalisation statistics (``*_mean`` / ``*_std``) in float32, and carries each
file's metadata over unchanged plus ``stored_dtype``. The folder is checked by loading it before
the command returns. The demo model in ``readtalk/assets/demo`` was made this way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from readtalk.data.manifest import load_manifest, resolve
from readtalk.errors import ReadtalkError
from readtalk.media import read_image
from readtalk.pipeline import Pipeline
from readtalk.release import model_files, read_safetensors, release_path, write_safetensors
from readtalk.settings import MODEL_DEFAULT_KEYS

STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
KEEP_FP32 = ("_mean", "_std")  # statistics: tiny, and worth their precision


def convert(src: Path, dst: Path, dtype: torch.dtype) -> int:
    """Copy one safetensors file with its floating-point tensors stored as ``dtype``; returns
    the bytes written."""
    tensors, meta = read_safetensors(src)
    out = {}
    for k, v in tensors.items():
        if v.is_floating_point() and not k.endswith(KEEP_FP32):
            if dtype != torch.float32 and v.abs().max() > torch.finfo(dtype).max:
                raise ReadtalkError(f"{src}: {k} does not fit in {dtype} (use --dtype float32)")
            v = v.to(dtype)
        out[k] = v.contiguous()
    meta["stored_dtype"] = str(dtype).removeprefix("torch.")
    return write_safetensors(dst, out, meta).stat().st_size


def export_model(
    out: str | os.PathLike,
    vae: str | os.PathLike,
    speech: str | os.PathLike,
    dit: str | os.PathLike,
    dtype: str = "float16",
    defaults: dict | None = None,
    portraits: str | os.PathLike | None = None,
) -> dict:
    """Write a model folder; returns ``{"files": {name: bytes}, "total_bytes": n}``.
    ``portraits``: the training dataset; the statistics of its training split's reference
    portraits go into pipeline.json ("portrait"), so that a portrait unlike them is warned
    about (``Pipeline.portrait_fit``)."""
    if dtype not in STORE_DTYPES:
        raise ReadtalkError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    unknown = sorted(set(defaults or {}) - set(MODEL_DEFAULT_KEYS))
    if unknown:
        raise ReadtalkError(
            f"unknown pipeline.json key(s) {', '.join(unknown)} "
            f"(known: {', '.join(MODEL_DEFAULT_KEYS)})"
        )
    sources = {
        "vae": Path(vae),
        "speechae": release_path(speech, "speechae.safetensors"),
        "dit": release_path(dit, "dit.safetensors"),
    }
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, dst in model_files(root).items():
        sizes[dst.name] = convert(sources[name], dst, STORE_DTYPES[dtype])
    pj = root / "pipeline.json"
    if portraits is not None:
        defaults = {**(defaults or {}), "portrait": _portrait_stats(root, portraits)}
    if defaults:
        tmp = pj.with_name(".pipeline.json.partial")
        tmp.write_text(json.dumps(defaults, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, pj)
    if pj.is_file():
        sizes[pj.name] = pj.stat().st_size
    Pipeline.from_pretrained(root)  # fails with a clear error if the parts do not fit together
    return {"files": sizes, "total_bytes": sum(sizes.values())}


def _portrait_stats(root: Path, data: str | os.PathLike) -> dict:
    """``Pipeline.portrait_statistics`` of the training split's reference portraits of a
    dataset (one per identity), with the weights just written to ``root``."""
    refs = {}
    for rec in load_manifest(data, split="train"):
        refs.setdefault(rec.get("identity", rec["id"]), resolve(rec, "ref"))
    if not refs:
        raise ReadtalkError(f"{data}: no training clips to take portrait statistics from")
    pipe = Pipeline.from_pretrained(root)
    return pipe.portrait_statistics(read_image(p) for p in refs.values())


__all__ = ["convert", "export_model"]
