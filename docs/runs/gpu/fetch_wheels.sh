#!/usr/bin/env bash
# Run HERE (where pip reaches PyPI), from the repo root, before a device call of
# docs/runs/gpu/bench_gpu.sh: the pure-Python wheels the device image lacks for the bench
# (diffusers for the VAE, and its importlib_metadata), into .whl/ (git-ignored), for
# carry=[".whl"]. Versions as in this project's environment; about 5 MB in all.
set -euo pipefail
cd "$(dirname "$0")/../../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
PIP="${PIP:-python3 -m pip}"
$PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 importlib_metadata==10.2.0
ls -l .whl
