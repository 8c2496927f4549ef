#!/usr/bin/env bash
# docs/streaming.md, "The rolling schedule": quality on the held-out clips and 60-s videos, and
# the live figures, for a model folder ($1, default runs/demo-roll-distill); alone on the CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=.venv/bin/readtalk
M=${1:-runs/demo-roll-distill}
N=$(basename "$M")
O=results/rolling/$N
mkdir -p "$O"
# 32 held-out SynthTalk clips (table 1's), the model's own settings
$R bench results --model "$M" --data data/st1000 --out "$O/main" --tables main --main-steps 4 \
  --clips 32 --quiet > "$O/main.txt" 2>&1
# the 2 held-out 60-s videos (table 3's): seams at every 8-frame window start
mkdir -p "$O/long"
for id in $(.venv/bin/python -c "from readtalk.data.manifest import load_manifest; print(' '.join(r['id'] for r in load_manifest('data/long60','test')))"); do
  [ -f "$O/long/$id.mp4" ] || $R generate --model "$M" --image data/long60/ref/$id.png \
    --audio data/long60/video/$id.mp4 --out "$O/long/$id.mp4" --quiet
done
$R eval --pred "$O/long" --ref data/long60 --out "$O/long-eval" --clip-frames 9 --quiet \
  > "$O/long.txt" 2>&1
