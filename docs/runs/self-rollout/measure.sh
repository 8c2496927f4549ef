#!/usr/bin/env bash
# docs/streaming.md, "Self rollout": a model folder ($1) on the 2 held-out 60-s videos and the
# 32 held-out 5-s clips at the shipped 3 steps; extra arguments go to `readtalk generate`.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=.venv/bin/readtalk
M=$1; shift
O=results/self-rollout/$(basename "$M")
mkdir -p "$O/long"
for id in $(.venv/bin/python -c "from readtalk.data.manifest import load_manifest; print(' '.join(r['id'] for r in load_manifest('data/long60','test')))"); do
  [ -f "$O/long/$id.mp4" ] || $R generate --model "$M" --image data/long60/ref/$id.png \
    --audio data/long60/video/$id.mp4 --out "$O/long/$id.mp4" --quiet "$@"
done
$R eval --pred "$O/long" --ref data/long60 --out "$O/long-eval" --clip-frames 9 --quiet \
  > "$O/long.txt" 2>&1
$R bench results --model "$M" --data data/st1000 --out "$O/main" --tables main --main-steps 3 \
  --clips 32 --quiet > "$O/main.txt" 2>&1
