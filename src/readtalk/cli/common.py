"""What several command groups share: the training run options, the model options of every
command that generates, and the set-up both need."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from readtalk.errors import ReadtalkError


def set_threads(n: int) -> None:
    """``--threads N``: torch CPU threads (0 keeps torch's default)."""
    if n:
        import torch

        torch.set_num_threads(n)


# ------------------------------------------------------------------------------- training


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The options every ``readtalk train STAGE`` takes."""
    p.add_argument("--data", help="dataset folder with manifest.jsonl")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, weights)")
    p.add_argument("--config", help="YAML file of config overrides")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument("--steps", type=int, default=0, help="shortcut for --set train.steps=N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def train_config(cls, a: argparse.Namespace, extra: dict):
    """The run's config: on --resume the run folder's own config.yaml, then --config, the
    command-line options and --set overrides on top."""
    import yaml

    from readtalk.config import load_config, merge, parse_overrides

    base: dict = {}
    saved = Path(a.out) / "config.yaml"
    if a.resume and saved.is_file():
        base = yaml.safe_load(saved.read_text()) or {}
    cli: dict = {"data": a.data} if a.data else {}
    if a.steps:
        cli["train"] = {"steps": a.steps}
    cli.update({k: v for k, v in extra.items() if v is not None})
    parse_overrides(a.set or [])  # syntax errors first, as one line
    return load_config(cls, a.config, a.set, base=merge(base, cli))


def report_release(path: Path | None, out: str) -> None:
    """One line about the written release, from rank 0 only under torchrun."""
    from readtalk.train import dist

    if dist.is_main():
        print(f"wrote {path} (metrics in {Path(out) / 'metrics.jsonl'})")


# --------------------------------------------------------------------------------- models


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    """``--dtype``, as every command that runs a model takes it."""
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "auto"),
        default="float32",
        help="auto: bfloat16 where the device has bf16 matrix units (CUDA, AMX CPUs), else float32",
    )


def add_model_args(p: argparse.ArgumentParser, parts: bool = True) -> None:
    """``--model DIR`` (default: the demo model in the package), or the three release files,
    and where and how the model runs."""
    p.add_argument(
        "--model",
        default=None,
        help="model folder: vae/speechae/dit.safetensors (+pipeline.json); default: the demo "
        "model shipped in the package",
    )
    if parts:
        p.add_argument("--vae", default=None, help="vae.safetensors (instead of --model)")
        p.add_argument("--speech", default=None, help="speechae.safetensors (instead of --model)")
        p.add_argument("--dit", default=None, help="dit.safetensors (instead of --model)")
    p.add_argument("--whisper", default=None, help="Whisper-tiny weights (default: packaged)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    add_dtype_arg(p)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="onnx: run the DiT and the frame decoder in onnxruntime (CPU, float32); --model "
        "must be a folder written by `readtalk export --format onnx`",
    )


def load_pipeline(a: argparse.Namespace):
    """The pipeline ``add_model_args`` describes; without a model, the shipped demo model
    (said in one line on stderr)."""
    from readtalk.pipeline import Pipeline

    set_threads(a.threads)
    explicit = [getattr(a, k, None) for k in ("vae", "speech", "dit")]
    if a.model and any(explicit):
        raise ReadtalkError("give either --model or --vae/--speech/--dit, not both")
    runtime = getattr(a, "runtime", "torch")
    if runtime == "onnx" and not a.model:
        raise ReadtalkError(
            "--runtime onnx needs --model DIR, a folder written by "
            "`readtalk export --format onnx --out DIR` (default: of the demo model)"
        )
    if any(explicit):
        if not all(explicit):
            raise ReadtalkError("give all three of --vae, --speech and --dit (or --model DIR)")
        return Pipeline.from_files(
            vae=a.vae, speech=a.speech, dit=a.dit, whisper=a.whisper, device=a.device,
            dtype=a.dtype,
        )  # fmt: skip
    return Pipeline.from_pretrained(
        model_or_demo(a.model), whisper=a.whisper, device=a.device, dtype=a.dtype,
        runtime=runtime,
    )  # fmt: skip


def model_or_demo(model: str | None) -> str:
    """``--model``, or the demo model shipped in the package (said in one line on stderr)."""
    if model:
        return model
    from readtalk.release import default_model_dir

    path = str(default_model_dir())
    print(f"using the shipped demo model ({path})", file=sys.stderr)
    return path


def add_settings_args(p: argparse.ArgumentParser) -> None:
    """The generation settings (``readtalk.settings.GenerationSettings``) as options; None
    keeps the model's default."""
    from readtalk.settings import DECODE_CONTEXT, GROUP_BLEND

    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: model's, 8)")
    p.add_argument(
        "--cfg",
        choices=("split", "joint", "none"),
        default=None,
        help="guidance: split (ref alpha, audio beta), joint (gamma) or none (default: split)",
    )
    p.add_argument("--alpha", type=float, default=None, help="Split-CFG reference scale (2)")
    p.add_argument("--beta", type=float, default=None, help="Split-CFG audio scale (6)")
    p.add_argument("--gamma", type=float, default=None, help="Joint-CFG scale (6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clip-frames", type=int, default=None, help="frames per clip, 8k+1 (default 121)"
    )
    p.add_argument(
        "--no-ans", action="store_true", help="plain chunking without motion frames (ablation)"
    )
    p.add_argument(
        "--schedule",
        choices=("clips", "rolling"),
        default=None,
        help="clips of --clip-frames, or rolling: one 8-frame latent at a time, for low latency "
        "(a model trained for it; default: the model's)",
    )
    p.add_argument(
        "--context-latents",
        type=int,
        default=None,
        metavar="N",
        help="rolling schedule: latents a new one is generated after (default: the model's)",
    )
    p.add_argument(
        "--motion-floor",
        type=float,
        default=None,
        metavar="T",
        help="least noise level of the motion latents while the new ones are noisier (default: "
        "the model's; 0: READ's one step ahead; docs/streaming.md, Drift)",
    )
    p.add_argument(
        "--gate-db",
        type=float,
        default=None,
        metavar="DB",
        help="silence what the model hears in pauses quieter than the speech by more than DB "
        "(default: the model's; 0: no gate; the video keeps the speech as given)",
    )
    p.add_argument(
        "--motion-from",
        choices=("frames", "latents"),
        default=None,
        help="a later clip's motion: the previous clip's last frames re-encoded (default) or "
        "its last latents as they are (ablation)",
    )
    p.add_argument(
        "--decode-context",
        type=int,
        default=None,
        metavar="N",
        help=f"latents of the previous clip the VAE decoder continues from (default "
        f"{DECODE_CONTEXT}; 0: every clip decoded on its own, the ablation)",
    )
    p.add_argument(
        "--group-blend",
        type=int,
        default=None,
        metavar="N",
        help=f"frames over which a factorised VAE spreads the step into each 8-frame group "
        f"(default {GROUP_BLEND}; 0: as decoded)",
    )


def settings_overrides(a: argparse.Namespace) -> dict:
    """``add_settings_args``'s options as ``GenerationSettings`` overrides."""
    return {
        "steps": a.steps, "guidance": a.cfg, "alpha": a.alpha, "beta": a.beta, "gamma": a.gamma,
        "seed": a.seed, "clip_frames": a.clip_frames, "ans": not a.no_ans,
        "motion_from": a.motion_from, "decode_context": a.decode_context,
        "group_blend": a.group_blend, "schedule": a.schedule,
        "context_latents": a.context_latents, "motion_floor": a.motion_floor,
        "gate_db": a.gate_db,
    }  # fmt: skip
