"""``readtalk generate | demo | export``: models turned into videos, and model folders made."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from readtalk.cli.common import (
    add_model_args,
    add_settings_args,
    load_pipeline,
    set_threads,
    settings_overrides,
)
from readtalk.errors import ReadtalkError


def cmd_generate(a: argparse.Namespace) -> None:
    """``readtalk generate``."""
    pipe = load_pipeline(a)
    res = pipe.generate_to_file(
        pipe.prepare_image(a.image, a.crop), a.audio, a.out, progress=not a.quiet,
        **settings_overrides(a),
    )  # fmt: skip
    print(
        f"wrote {res.path}: {res.num_frames} frames ({res.duration:.2f} s at {res.fps} fps, "
        f"{res.size}x{res.size}, {res.clips} clip{'s' if res.clips != 1 else ''}) in "
        f"{res.seconds:.1f} s (real-time factor {res.realtime_factor:.2f})"
    )


def cmd_live(a: argparse.Namespace) -> None:
    """``readtalk live``."""
    from readtalk.live import run_live, speech_source

    pipe = load_pipeline(a)
    st = pipe.settings(**settings_overrides(a))
    if a.audio == "-":
        print("reading PCM s16le 16 kHz mono from stdin", file=sys.stderr)
    rep = run_live(
        pipe, a.image, speech_source(a.audio, a.chunk_ms), a.out, st, paced=a.paced,
        chunk_ms=a.chunk_ms, crop=a.crop,
    )  # fmt: skip
    print(
        f"wrote {a.out}: {rep.frames} frames for {rep.audio_s:.2f} s of speech; first frame "
        f"{rep.first_frame_s:.2f} s after the first sample, real-time factor {rep.rtf:.2f}, "
        f"{rep.underruns} frames late"
    )


def cmd_demo(a: argparse.Namespace) -> None:
    """``readtalk demo``."""
    from readtalk.demo import run_demo, synth_sample

    out = Path(a.out)
    res = run_demo(out, a.model, a.image, a.audio, a.seed, a.device, progress=True)
    if res["model"]:
        said = f' saying "{res["text"]}"' if res["text"] else ""
        print(
            f"wrote {res['video']}{said}: {res['frames']} frames for {res['audio_seconds']:.2f} s "
            f"of speech in {res['seconds']:.2f} s (real-time factor {res['rtf']:.2f})"
            + (f"; SynthTalk's rendering of the same: {res['truth']}" if "truth" in res else "")
        )
        return
    print("no trained demo model is installed yet: writing a SynthTalk sample instead")
    records = synth_sample(out, a.clips, a.size, a.seed)
    print(
        f"SynthTalk sample: {len(records)} talking-head clips in {out}/video/*.mp4 "
        f"(ground truth in {out}/track, overview in {out}/sheet.png)"
    )


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_export(a: argparse.Namespace) -> None:
    """``readtalk export``: a model folder from release files, or (``--format onnx``) a model
    folder's ONNX export."""
    parts = {"--vae": a.vae, "--speech": a.speech, "--dit": a.dit}
    if a.format == "onnx":
        _export_onnx(a, [k for k, v in parts.items() if v])
        return
    if a.model:
        raise ReadtalkError("--model is for --format onnx; give --vae, --speech and --dit")
    missing = [k for k, v in parts.items() if not v]
    if missing:
        raise ReadtalkError(f"readtalk export needs {', '.join(missing)} (or --format onnx)")
    from readtalk.export import export_model

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
    res = export_model(
        a.out, a.vae, a.speech, a.dit, dtype=a.dtype, defaults=defaults or None,
        portraits=a.portraits,
    )  # fmt: skip
    for name, n in res["files"].items():
        print(f"  {name:22s} {n / 1e6:7.2f} MB")
    print(f"wrote {a.out} ({res['total_bytes'] / 1e6:.2f} MB, weights stored as {a.dtype})")


def _export_onnx(a: argparse.Namespace, parts: list[str]) -> None:
    """``readtalk export --format onnx``."""
    from readtalk.onnx_runtime import export_onnx
    from readtalk.release import default_model_dir

    given = {"--set": a.set, "--copy-defaults": a.copy_defaults, "--portraits": a.portraits}
    unused = parts + [k for k, v in given.items() if v]
    if unused:
        raise ReadtalkError(
            f"--format onnx exports a model folder (--model DIR); {', '.join(unused)}: "
            "options of the safetensors export"
        )
    set_threads(a.threads)
    model = a.model or default_model_dir()
    m = export_onnx(model, a.out, opset=a.opset)
    for name, g in m["graphs"].items():
        size = (Path(a.out) / g["file"]).stat().st_size
        print(
            f"  {g['file']:22s} {size / 1e6:7.2f} MB  max |onnx - torch| "
            f"{g['max_abs_diff']:.1e} ({name})"
        )
    print(
        f"wrote {a.out} (ONNX opset {m['opset']} of {model}): run it with "
        f"`readtalk generate --runtime onnx --model {a.out} ...`"
    )


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="gather trained vae/speechae/dit weights into one model folder, or export a "
        "model folder to ONNX (--format onnx)",
    )
    p.add_argument(
        "--format",
        choices=("safetensors", "onnx"),
        default="safetensors",
        help="safetensors: a model folder from --vae/--speech/--dit (default); onnx: the "
        "DiT and frame decoder of --model as ONNX, in a model folder for --runtime onnx",
    )
    p.add_argument("--vae", default=None, help="vae.safetensors")
    p.add_argument("--speech", default=None, help="speechae.safetensors or its run folder")
    p.add_argument("--dit", default=None, help="dit.safetensors or its run folder")
    p.add_argument(
        "--model", default=None, help="--format onnx: model folder to export (default: demo)"
    )
    p.add_argument("--opset", type=int, default=18, help="--format onnx: ONNX opset")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument(
        "--dtype",
        default="float16",
        choices=("bfloat16", "float16", "float32"),
        help="stored weight precision",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a pipeline.json default (size, steps, guidance, alpha, beta, clip_frames, ...)",
    )
    p.add_argument("--copy-defaults", default=None, help="start pipeline.json from this file")
    p.add_argument(
        "--portraits",
        default=None,
        metavar="DATA",
        help="training dataset: record its portraits' statistics, so that generation warns "
        "about a portrait unlike them",
    )
    p.set_defaults(func=cmd_export)


def register(sub) -> None:
    """The generation commands on the top-level subparsers."""
    p = sub.add_parser("generate", help="portrait + speech -> talking-head mp4")
    p.add_argument("--image", required=True, help="portrait (PNG/JPEG)")
    p.add_argument(
        "--crop",
        choices=("center", "face"),
        default="center",
        help="centre square, or frame the detected face as prepared footage is",
    )
    p.add_argument("--audio", required=True, help="speech (any audio file or video's audio)")
    p.add_argument("--out", required=True, help="mp4 to write")
    add_model_args(p)
    add_settings_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "live", help="speech as it arrives (a file or PCM on stdin) -> a growing mp4"
    )
    p.add_argument("--image", required=True, help="portrait (PNG/JPEG)")
    p.add_argument("--crop", choices=("center", "face"), default="center")
    p.add_argument(
        "--audio", required=True, help="speech file, or - for raw PCM s16le 16 kHz mono on stdin"
    )
    p.add_argument("--out", required=True, help="mp4 to write (fragmented: playable as it grows)")
    p.add_argument(
        "--paced", action="store_true", help="feed a file at the speed of speech (as a microphone)"
    )
    p.add_argument("--chunk-ms", type=float, default=20.0, help="piece size read from a file")
    add_model_args(p)
    add_settings_args(p)
    p.set_defaults(func=cmd_live)

    p = sub.add_parser(
        "demo", help="speak a sentence with a face using the demo model (demo/demo.mp4)"
    )
    p.add_argument("--out", default="demo", help="output folder")
    p.add_argument("--model", help="model folder (default: the demo model in the package)")
    p.add_argument("--image", help="portrait to animate (default: a new SynthTalk identity)")
    p.add_argument("--audio", help="speech to say (default: a generated sentence)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clips", type=int, default=6, help="without a model: sample clips")
    p.add_argument("--size", type=int, default=256, help="without a model: sample size")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    _add_export(sub)
