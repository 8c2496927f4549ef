"""``readtalk export``: trained weights gathered into one model folder (for ``from_pretrained``).

A model folder holds ``vae.safetensors``, ``speechae.safetensors``, ``dit.safetensors`` and
``pipeline.json`` (sampling defaults). Export copies the three release files, by default storing
their floating-point weights in float16 (half the bytes; every loader reads them back as
float32), keeps normalisation statistics (``*_mean`` / ``*_std``) in float32, and carries each
file's metadata over unchanged plus ``stored_dtype``. The folder is checked by loading it before
the command returns. The demo model in ``readtalk/assets/demo`` was made this way.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from readtalk.errors import ReadtalkError

STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
KEEP_FP32 = ("_mean", "_std")  # statistics: tiny, and worth their precision


def convert(src: Path, dst: Path, dtype: torch.dtype) -> int:
    """Copy one safetensors file with its floating-point tensors stored as ``dtype``; returns
    the bytes written."""
    from readtalk.train.common import read_safetensors, write_safetensors

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
) -> dict:
    """Write a model folder; returns ``{"files": {name: bytes}, "total_bytes": n}``."""
    from readtalk.pipeline import DEFAULT_KEYS, Pipeline, model_files
    from readtalk.train.common import release_path

    if dtype not in STORE_DTYPES:
        raise ReadtalkError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    unknown = sorted(set(defaults or {}) - set(DEFAULT_KEYS))
    if unknown:
        raise ReadtalkError(
            f"unknown pipeline.json key(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_KEYS)})"
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
    if defaults:
        tmp = pj.with_name(".pipeline.json.partial")
        tmp.write_text(json.dumps(defaults, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, pj)
    if pj.is_file():
        sizes[pj.name] = pj.stat().st_size
    Pipeline.from_pretrained(root)  # fails with a clear error if the parts do not fit together
    return {"files": sizes, "total_bytes": sum(sizes.values())}


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_export(a: argparse.Namespace) -> None:
    defaults = {}
    for item in a.set or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ReadtalkError(f"--set wants key=value, got {item!r}")
        defaults[key] = _value(val)
    if a.copy_defaults:
        src = Path(a.copy_defaults)
        try:
            defaults = {**json.loads(src.read_text()), **defaults}
        except (OSError, json.JSONDecodeError) as e:
            raise ReadtalkError(f"cannot read {src} ({e})") from None
    res = export_model(a.out, a.vae, a.speech, a.dit, dtype=a.dtype, defaults=defaults or None)
    for name, n in res["files"].items():
        print(f"  {name:22s} {n / 1e6:7.2f} MB")
    print(f"wrote {a.out} ({res['total_bytes'] / 1e6:.2f} MB, weights stored as {a.dtype})")


def add_cli(sub) -> None:
    p = sub.add_parser(
        "export", help="gather trained vae/speechae/dit weights into one model folder"
    )
    p.add_argument("--vae", required=True, help="vae.safetensors")
    p.add_argument("--speech", required=True, help="speechae.safetensors or its run folder")
    p.add_argument("--dit", required=True, help="dit.safetensors or its run folder")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument(
        "--dtype", default="float16", choices=sorted(STORE_DTYPES), help="stored weight precision"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a pipeline.json default (size, steps, guidance, alpha, beta, clip_frames, ...)",
    )
    p.add_argument("--copy-defaults", default=None, help="start pipeline.json from this file")
    p.set_defaults(func=cmd_export)


__all__ = ["add_cli", "convert", "export_model"]
