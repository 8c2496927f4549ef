#!/usr/bin/env bash
# The prepared GPU check: `readtalk bench gpu` at paper scale (paper DiT, 512 px, 121 frames,
# 8 steps, Split-CFG, random weights) on one lent H100 / H200, in under 8 minutes.
# What it measures: docs/speed.md, "GPU: the prepared check".
#
# Here (where pip works), once, from the repo root:
#     bash docs/runs/gpu/fetch_wheels.sh      # diffusers + importlib_metadata wheels -> .whl/
# Then one device call, from the repo root (the machine's start is extra):
#     run(command="bash docs/runs/gpu/bench_gpu.sh", carry=[".whl"], timeout_s=560)
# and copy what comes back (bench_gpu.json, bench_gpu.md, bench_gpu.log, versions.txt,
# nvidia_smi.csv) into docs/runs/gpu/.
#
# The device machine runs its own python3 (3.12, CUDA PyTorch) on readtalk's source tree
# (PYTHONPATH=src, nothing installed): this project's .venv cannot travel (CPU PyTorch,
# Python 3.11, 2.6 GB against the 64 MiB carry limit). Its image lacks diffusers (the VAE
# needs it: carried as wheels) and the media libraries av / soundfile / soxr, which
# readtalk.media imports but this bench never calls (it reads and writes no audio or video):
# stand-in modules take their place where they are missing. Extra arguments go to the bench
# (e.g. --budget-s 300, --compile-mode max-autotune-no-cudagraphs).
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
OUT=${OUT:-$PWD/bench-gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
for m in av soundfile soxr; do
    if ! $PY -c "import $m" 2>/dev/null; then
        mkdir -p /tmp/stubs
        cat >"/tmp/stubs/$m.py" <<EOF
"""Stand-in for $m, not installed here: readtalk bench gpu reads and writes no media."""


def __getattr__(name):
    raise AttributeError(f"$m is not installed on this machine (stand-in of bench_gpu.sh): {name}")
EOF
        echo "note: $m is not installed here; a stand-in module takes its place"
    fi
done
if [ -d /tmp/stubs ]; then PYTHONPATH="$PYTHONPATH:/tmp/stubs"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    | tee "$OUT/nvidia_smi.csv"
$PY -c "import sys, torch, diffusers; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| CUDA', torch.version.cuda, torch.cuda.is_available(), '| diffusers',
diffusers.__version__)" 2>&1 | tee "$OUT/versions.txt"
timeout 470 $PY -m readtalk.cli bench gpu --out "$OUT" "$@" 2>&1 | tee "$OUT/bench_gpu.log"
rc=${PIPESTATUS[0]}
echo "readtalk bench gpu: exit status $rc (124: stopped at 470 s; bench_gpu.json keeps what was measured)"
exit "$rc"
