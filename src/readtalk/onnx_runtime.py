"""ONNX export of the two networks a generation spends its time in, and an onnxruntime path.

    readtalk export --format onnx --out models/demo-onnx            # the shipped demo model
    readtalk generate --runtime onnx --model models/demo-onnx --image face.png --audio a.wav \\
        --out out.mp4

    from readtalk.onnx_runtime import export_onnx
    export_onnx("models/readtalk", "models/readtalk-onnx")           # any model folder
    pipe = Pipeline.from_pretrained("models/readtalk-onnx", runtime="onnx")

**What is exported** (``torch.onnx.export``'s TorchScript exporter, opset 18, float32 weights):

* ``dit.onnx``: ``A2VDiT.forward``, the call ``GenerationModels.velocity`` makes once per
  Euler step, inputs ``x (B, C, f, h, w)``, ``t (B, 1 + f)``, ``ref (B, C, 1, h, w)``,
  ``audio (B, f, A)``, ``ref_mask (B,)`` and ``audio_mask (B,)`` (bool), output
  ``v (B, C, f, h, w)``. ``B``, ``f`` (>= 2), ``h`` and ``w`` are dynamic: Split-CFG's batch of
  3, one-pass sampling's 1, any ``--clip-frames`` and the server's stacked sessions run the
  same graph. The RoPE tables and the audio window are computed inside the graph (the model
  skips its table cache while traced).
* ``frame_decoder.onnx`` (factorised VAEs only): the frame VAE's decoder on single frames,
  ``z (n, C, 1, h, w) -> frames (n, 3, 1, H, W)`` with ``n`` dynamic: the call
  ``FactorisedVAE.decode_frames`` makes for every 16 decoded frames.

The rest (Whisper front end and SpeechAE, the VAE encoder and packer, a VAE's portrait
refiner, the sampling loop, ANS) is cheap next to these two and stays in torch.

**An ONNX folder** is a complete model folder: the three ``*.safetensors`` and
``pipeline.json`` are copied from the source (the torch runtime loads the folder as is; the
onnx runtime takes the SpeechAE, the VAE encoder / packer and the DiT's config, latent
statistics and sampling defaults from them), plus the graphs and ``onnx.json``, the manifest:
format, opset, source folder, the torch / onnx / onnxruntime versions, every graph's input and
output shapes and the largest difference from torch measured on the export's example inputs.
The folder is written under a temporary name and renamed into place when complete.

**The runtime is an object swap** (``use_onnx``): ``models.dit`` becomes an ``OnnxDiT`` and
the VAE's ``frame.ae.decoder`` an ``OnnxFrameDecoder``, modules with the call signature of
the ones they replace, so sampling, guidance, ANS and decoding run the same code. onnxruntime
runs on the CPU (``CPUExecutionProvider``) in float32 with torch's thread count
(``torch.get_num_threads()`` when the folder is loaded).

onnx and onnxruntime are the optional extra ``pip install 'readtalk[onnx]'``; they
are imported only when an export or an ONNX folder is loaded. Parity with torch and speed on
the demo model: docs/onnx.md.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from readtalk.data.cache import file_sha256
from readtalk.dit.model import DiTConfig
from readtalk.dit.release import load_dit_release
from readtalk.errors import ReadtalkError
from readtalk.release import read_model_folder
from readtalk.settings import DEFAULT_SIZE, GenerationSettings
from readtalk.vae.factorised import FactorisedVAE, load_vae

__all__ = [
    "MANIFEST", "ONNX_FORMAT", "RUNTIMES", "OnnxDiT", "OnnxFrameDecoder", "export_onnx",
    "is_onnx_folder", "read_manifest", "use_onnx",
]  # fmt: skip

ONNX_FORMAT = "readtalk-onnx/1"
MANIFEST = "onnx.json"
DIT_FILE, DECODER_FILE = "dit.onnx", "frame_decoder.onnx"
RUNTIMES = ("torch", "onnx")
DEFAULT_OPSET = 18
INSTALL = "pip install 'readtalk[onnx]'"
DIT_INPUTS = ("x", "t", "ref", "audio", "ref_mask", "audio_mask")


def _need(*modules: str) -> list[Any]:
    """Import the onnx extra's ``modules``, or a one-line error saying how to install it."""
    out, missing = [], []
    for name in modules:
        try:
            out.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise ReadtalkError(f"the ONNX runtime needs {', '.join(missing)}: {INSTALL}")
    return out


# ------------------------------------------------------------------------------------ runtime


def _session(path: Path, threads: int) -> Any:
    (ort,) = _need("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # idle workers sleep instead of spinning: between two DiT calls torch runs the speech
    # codes, the packer and the frame conversion on the same cores
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types are not importable by name
        raise ReadtalkError(f"{path}: onnxruntime cannot load it ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _numpy(x: Tensor, dtype: torch.dtype = torch.float32) -> np.ndarray:
    return x.detach().to("cpu", dtype).contiguous().numpy()


class _OnnxModule(nn.Module):
    """An onnxruntime session called like a torch module (no parameters of its own)."""

    def __init__(self, session: Any, path: Path) -> None:
        super().__init__()
        self.session = session
        self.path = path

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return self.session.run(None, feed)[0]
        except Exception as e:  # shapes the graph does not take, out of memory, ...
            raise ReadtalkError(
                f"{self.path.name}: onnxruntime failed ({_first_line(e)})"
            ) from None


class OnnxDiT(_OnnxModule):
    """``dit.onnx`` with ``A2VDiT.forward``'s signature and checks; ``cfg`` is the DiT's."""

    def __init__(self, session: Any, path: Path, cfg: DiTConfig) -> None:
        super().__init__(session, path)
        self.cfg = cfg

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        ref: Tensor,
        audio: Tensor,
        ref_mask: Tensor | None = None,
        audio_mask: Tensor | None = None,
    ) -> Tensor:
        """As ``A2VDiT.forward``: (B, C, f, h, w) velocity of the video latents, f >= 2."""
        cfg = self.cfg
        b, c, f, h, w = x.shape
        if c != cfg.latent_channels:
            raise ReadtalkError(f"DiT {cfg.name} takes {cfg.latent_channels} channels, got {c}")
        if f < 2:
            raise ReadtalkError(f"the ONNX DiT takes clips of >= 2 latent frames, got {f}")
        want = {"t": (b, 1 + f), "ref": (b, c, 1, h, w), "audio": (b, f, cfg.audio_dim)}
        for name, tensor in (("t", t), ("ref", ref), ("audio", audio)):
            if tuple(tensor.shape) != want[name]:
                raise ReadtalkError(f"{name} must be {want[name]}, got {tuple(tensor.shape)}")
        keep = torch.ones(b, dtype=torch.bool)
        feed = dict(zip(DIT_INPUTS, (
            _numpy(x), _numpy(t), _numpy(ref), _numpy(audio),
            _numpy(keep if ref_mask is None else ref_mask, torch.bool),
            _numpy(keep if audio_mask is None else audio_mask, torch.bool),
        ), strict=True))  # fmt: skip
        return torch.from_numpy(self._run(feed)).to(x.device, x.dtype)


class OnnxFrameDecoder(_OnnxModule):
    """``frame_decoder.onnx`` called as the frame VAE's decoder on single frames:
    (n, C, 1, h, w) latents -> (n, 3, 1, H, W) frames in about [-1, 1]."""

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 5 or z.shape[2] != 1:
            raise ReadtalkError(
                f"the ONNX frame decoder decodes single frames (n, C, 1, h, w), got "
                f"{tuple(z.shape)}"
            )
        return torch.from_numpy(self._run({"z": _numpy(z)})).to(z.device, z.dtype)


def is_onnx_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an ONNX export (its ``onnx.json``)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """An ONNX folder's ``onnx.json``; one-line errors for a folder that is not one."""
    root = Path(folder)
    path = root / MANIFEST
    if not path.is_file():
        raise ReadtalkError(
            f"{root} is not an ONNX model folder (no {MANIFEST}): write one with "
            f"`readtalk export --format onnx --model {root} --out DIR` and use --model DIR"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReadtalkError(f"{path}: unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ONNX_FORMAT:
        raise ReadtalkError(f"{path}: not a readtalk ONNX manifest ({ONNX_FORMAT!r})")
    for graph in manifest.get("graphs", {}).values():
        if not (root / graph["file"]).is_file():
            raise ReadtalkError(f"ONNX model folder {root} lacks {graph['file']}")
    return manifest


def use_onnx(models: Any, folder: str | os.PathLike, threads: int | None = None) -> Any:
    """Swap the DiT and the frame decoder of ``models`` (a ``GenerationModels`` loaded from
    the same folder, CPU, float32) for the ONNX graphs of ``folder``; returns ``models``.
    ``threads``: onnxruntime's intra-op threads (default: torch's)."""
    root = Path(folder)
    graphs = read_manifest(root)["graphs"]
    if models.device.type != "cpu" or models.dtype != torch.float32:
        raise ReadtalkError(
            f"the onnx runtime runs on the CPU in float32, not {models.device.type} "
            f"{str(models.dtype).removeprefix('torch.')}"
        )
    n = threads or torch.get_num_threads()
    if "dit" not in graphs:
        raise ReadtalkError(f"{root / MANIFEST}: no DiT graph")
    path = root / graphs["dit"]["file"]
    models.dit = OnnxDiT(_session(path, n), path, models.dit.cfg)
    if "frame_decoder" in graphs:
        if not isinstance(models.vae, FactorisedVAE):
            raise ReadtalkError(f"{root}: a frame decoder graph, but the VAE is not factorised")
        path = root / graphs["frame_decoder"]["file"]
        models.vae.frame.ae.decoder = OnnxFrameDecoder(_session(path, n), path)
    return models


# ------------------------------------------------------------------------------------- export


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The tracer's warnings off (its shape checks turned into constants, the exporter's
    deprecation notice): the export is checked numerically instead (``_compare``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    names: tuple[list[str], list[str]],
    dynamic: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """The TorchScript exporter (``dynamo=False``): it traces the module once with the example
    inputs, every axis named in ``dynamic`` left symbolic. (``dynamo=True`` gives the same
    graph numerically but took 10x longer to export: 60 s for the demo model, docs/onnx.md.)"""
    with _quiet_exporter(), torch.no_grad():
        try:
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset,
                input_names=names[0], output_names=names[1], dynamic_axes=dynamic,
            )  # fmt: skip
        except Exception as e:
            raise ReadtalkError(f"ONNX export of {path.name} failed ({_first_line(e)})") from e
    _fix_transpose(path)


def _fix_transpose(path: Path) -> None:
    """Make negative ``perm`` entries of Transpose nodes positive: the TorchScript exporter
    writes ``movedim(1, -1)`` (diffusers' LTX blocks) as ``perm = [0, -1, ...]``, which ONNX
    does not allow and onnxruntime refuses to load."""
    (onnx,) = _need("onnx")
    model = onnx.load(str(path))
    changed = False
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Transpose" and attr.name == "perm" and min(attr.ints) < 0:
                n = len(attr.ints)
                attr.ints[:] = [p % n for p in attr.ints]
                changed = True
    if changed:
        onnx.save(model, str(path))


def _compare(module: nn.Module, args: tuple[Tensor, ...], path: Path, names: list[str]) -> float:
    """Largest |onnxruntime - torch| on the export's example inputs."""
    with torch.no_grad():
        want = module(*args).numpy()
    feed = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    got = _session(path, torch.get_num_threads()).run(None, feed)[0]
    return float(np.abs(got - want).max())


def _export_dit(dit: nn.Module, root: Path, f: int, h: int, w: int, opset: int) -> dict:
    cfg = dit.cfg
    c, a = cfg.latent_channels, cfg.audio_dim
    g = torch.Generator().manual_seed(0)
    b = 3  # Split-CFG's [uncond ; ref-only ; full]
    t = torch.rand(b, 1 + f, generator=g)
    t[:, 0] = 0.0
    args = (
        torch.randn(b, c, f, h, w, generator=g), t, torch.randn(b, c, 1, h, w, generator=g),
        torch.randn(b, f, a, generator=g), torch.tensor([False, True, True]),
        torch.tensor([False, False, True]),
    )  # fmt: skip
    video = {0: "B", 2: "f", 3: "h", 4: "w"}
    dynamic = {
        "x": video, "t": {0: "B", 1: "1+f"}, "ref": {0: "B", 3: "h", 4: "w"},
        "audio": {0: "B", 1: "f"}, "ref_mask": {0: "B"}, "audio_mask": {0: "B"}, "v": video,
    }  # fmt: skip
    module = dit.eval()  # called as GenerationModels.velocity does: six positional inputs
    path = root / DIT_FILE
    _export(module, args, path, (list(DIT_INPUTS), ["v"]), dynamic, opset)
    return {
        "file": DIT_FILE,
        "inputs": {
            "x": ["B", c, "f", "h", "w"], "t": ["B", "1+f"],
            "ref": ["B", c, 1, "h", "w"], "audio": ["B", "f", a],
            "ref_mask": ["B"], "audio_mask": ["B"],
        },
        "outputs": {"v": ["B", c, "f", "h", "w"]},
        "example": {"B": b, "f": f, "h": h, "w": w},
        "max_abs_diff": _compare(module, args, path, list(DIT_INPUTS)),
        "config": json.loads(cfg.to_json()),
    }  # fmt: skip


def _export_decoder(vae: FactorisedVAE, root: Path, h: int, w: int, opset: int) -> dict:
    c, s = vae.latent_channels, vae.spatial_factor
    n = 4
    z = torch.randn(n, c, 1, h, w, generator=torch.Generator().manual_seed(0))
    module = vae.frame.ae.decoder.eval()
    path = root / DECODER_FILE
    dynamic = {"z": {0: "n", 3: "h", 4: "w"}, "frames": {0: "n", 3: "H", 4: "W"}}
    _export(module, (z,), path, (["z"], ["frames"]), dynamic, opset)
    return {
        "file": DECODER_FILE,
        "inputs": {"z": ["n", c, 1, "h", "w"]},
        "outputs": {"frames": ["n", 3, 1, f"{s}h", f"{s}w"]},
        "example": {"n": n, "h": h, "w": w},
        "max_abs_diff": _compare(module, (z,), path, ["z"]),
    }


def _check_out(out: Path, src: Path) -> None:
    if out.resolve() == src.resolve():
        raise ReadtalkError(f"--out {out} is the source model folder; choose another folder")
    if out.exists() and not out.is_dir():
        raise ReadtalkError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_onnx_folder(out):
        raise ReadtalkError(
            f"--out {out} exists and is not an earlier ONNX export; choose a new folder"
        )


def export_onnx(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export a model folder's DiT (and its factorised VAE's frame decoder) to ONNX in the
    ONNX model folder ``out`` (module docstring); returns the manifest written to
    ``out/onnx.json``. An earlier export in ``out`` is replaced; the new folder appears only
    once complete. Example shapes: a Split-CFG batch of 3, the model's clip latents and frame
    size (every axis but the channels is dynamic)."""
    onnx, ort = _need("onnx", "onnxruntime")
    src, out = Path(model), Path(out)
    files, defaults = read_model_folder(src)
    _check_out(out, src)
    vae = load_vae(files["vae"]).eval()
    release = load_dit_release(files["dit"])
    dit = release.model.eval()
    model_defaults = {**release.diffusion, **defaults}
    f = GenerationSettings.from_model(model_defaults).clip_latents(vae.temporal_factor)
    size = int(model_defaults.get("size", DEFAULT_SIZE))
    h = w = size // vae.spatial_factor

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        graphs = {"dit": _export_dit(dit, tmp, f, h, w, opset)}
        if isinstance(vae, FactorisedVAE):
            graphs["frame_decoder"] = _export_decoder(vae, tmp, h, w, opset)
        copied = [*files.values(), *[p for p in [src / "pipeline.json"] if p.is_file()]]
        for p in copied:
            shutil.copy2(p, tmp / p.name)
        manifest = {
            "format": ONNX_FORMAT,
            "opset": opset,
            "source": str(src.resolve()),
            "source_sha256": {p.name: file_sha256(p) for p in files.values()},
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
            },
            "size": size,
            "clip_latents": f,
            "graphs": graphs,
            "torch_files": sorted(p.name for p in copied),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an earlier ``out`` is moved aside first and
    deleted after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
