"""The report of ``readtalk bench gpu`` (``readtalk.bench_gpu``): headline numbers and a
markdown table, pure functions of the run's JSON (so a table can be made again from a saved
``bench_gpu.json``: ``markdown(json.load(f))``).

**FLOP floor** = ``bench.dit_flops`` of one batch-1 forward x ``steps`` x 3 passes / the bf16
matrix-product peak measured in the same run: the clip time if every FLOP ran at that rate.
A clip's *fraction of peak* is floor / clip time; its *ratio to READ* is clip time / 4.421 s
(READ's 121-frame clip on an A100: another GPU, so not a like-for-like comparison).
**End-to-end fps** = ``clip_frames`` / (clip + VAE decode + speech), with the fastest clip
variant (and the eager one). ``first_frame_parts_s`` = speech + fastest clip + first decoded
run (a sum of measured parts). The live first-frame goal on a GPU is <= 0.25 s.
"""

from __future__ import annotations

from typing import Any

from readtalk.bench import _fmt_flops

__all__ = [
    "CLIP_VARIANTS",
    "LIVE_FIRST_FRAME_GOAL_S",
    "READ_A100_CLIP_S",
    "flop_floor",
    "fmt_rate",
    "fmt_s",
    "markdown",
    "summary",
]

READ_A100_CLIP_S = 4.421  # READ's generation time per 121-frame clip on an A100 (the paper)
LIVE_FIRST_FRAME_GOAL_S = 0.25  # the goal for a live first frame on a GPU
PASSES = 3  # Split-CFG: uncond, reference only, reference + audio, batched into one call
CLIP_VARIANTS = ("clip_eager", "clip_cuda_graph", "clip_compile", "clip_compile_cuda_graph")


def fmt_rate(x: float) -> str:
    return f"{x / 1e12:.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s"


def fmt_s(x: float | None) -> str:
    return "" if x is None else f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s"


def flop_floor(result: dict[str, Any]) -> float | None:
    rec = result["variants"].get("matmul_bf16", {})
    return result["flops"]["clip"] / rec["flops_per_s"] if rec.get("status") == "ok" else None


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _add(*xs: float | None) -> float | None:
    return None if any(x is None for x in xs) else sum(xs)  # type: ignore[arg-type]


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers from the variants measured so far (None where missing)."""

    def sec(name: str, key: str = "seconds") -> float | None:
        rec = result["variants"].get(name, {})
        return rec.get(key) if rec.get("status") == "ok" else None

    clips = {n: sec(n) for n in CLIP_VARIANTS if sec(n) is not None}
    best = min(clips, key=clips.get) if clips else None  # type: ignore[arg-type]
    best_s, floor = clips.get(best), flop_floor(result)  # type: ignore[arg-type]
    frames = result["settings"]["clip_frames"]
    speech, decode = sec("speech"), sec("vae_decode")
    e2e = _add(best_s, decode, speech)
    firsts = [x for x in (sec("session_first_frame"), sec("session_first_frame_best")) if x]
    return {
        "peak_bf16_flops": sec("matmul_bf16", "flops_per_s"),
        "dit_flops_clip": result["flops"]["clip"], "flop_floor_s": floor,
        "best_clip_variant": best, "best_clip_s": best_s, "read_a100_clip_s": READ_A100_CLIP_S,
        "best_vs_read_a100": _div(best_s, READ_A100_CLIP_S),
        "best_fraction_of_bf16_peak": _div(floor, best_s),
        "e2e_s": e2e, "e2e_fps": _div(frames, e2e),
        "e2e_fps_eager": _div(frames, _add(clips.get("clip_eager"), decode, speech)),
        "two_clips_fps": sec("two_clips", "fps"),
        "session_first_frame_s": min(firsts) if firsts else None,
        "first_frame_parts_s": _add(speech, best_s, sec("vae_decode", "first_run_s")),
        "live_first_frame_goal_s": LIVE_FIRST_FRAME_GOAL_S,
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The run as a markdown table (what docs/speed.md takes) with the headline lines."""
    st, env, sm = result["settings"], result["environment"], result["summary"]
    cuda = f" (CUDA {env['cuda']})" if env.get("cuda") else ""
    lines = [
        f"`readtalk bench gpu` on {env['device']}, torch {env['torch']}{cuda}: DiT {st['size']} "
        f"({st['dit_params'] / 1e6:.1f} M params, random weights), VAE {st['vae']}, "
        f"{st['front_end']} front end, {st['clip_frames']} frames at {st['res']} px "
        f"({st['tokens']} tokens), {st['steps']} steps x Split-CFG ({PASSES} passes batched); "
        f"budget {st['budget_s']:.0f} s, used {result.get('elapsed_s', 0):.0f} s.",
        "",
        "| measurement | what | time | derived | status |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["variants"].items():
        status = (r["status"] + (f": {r['error']}" if "error" in r else "")).replace("|", "/")
        time_s, derived = fmt_s(r.get("seconds")), r.get("derived", "")
        lines.append(f"| `{name}` | {r['what']} | {time_s} | {derived} | {status} |")

    def f(x: float | None, unit: str = " s", digits: int = 3, scale: float = 1.0) -> str:
        return "n/a" if x is None else f"{x * scale:.{digits}f}{unit}"

    lines += [
        "",
        f"- FLOP floor: {_fmt_flops(sm['dit_flops_clip'])} per clip / "
        f"{'n/a' if sm['peak_bf16_flops'] is None else fmt_rate(sm['peak_bf16_flops'])} "
        f"bf16 peak = **{f(sm['flop_floor_s'])}**",
        f"- best clip: {sm['best_clip_variant'] or 'n/a'}, **{f(sm['best_clip_s'])}** "
        f"({f(sm['best_vs_read_a100'], 'x', 2)} READ's {READ_A100_CLIP_S} s on an A100; "
        f"{f(sm['best_fraction_of_bf16_peak'], '%', 0, 100)} of the bf16 peak)",
        f"- end to end (clip + decode + speech): {f(sm['e2e_s'])}, "
        f"**{f(sm['e2e_fps'], ' fps', 1)}** (eager {f(sm['e2e_fps_eager'], ' fps', 1)}; "
        f"two clips in a row {f(sm['two_clips_fps'], ' fps', 1)})",
        f"- first frame after a clip's audio is complete: Session "
        f"**{f(sm['session_first_frame_s'])}**; parts (speech + clip + first decoded run) "
        f"{f(sm['first_frame_parts_s'])}; goal <= {LIVE_FIRST_FRAME_GOAL_S} s",
    ]
    return "\n".join(lines) + "\n"
