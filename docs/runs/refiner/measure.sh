#!/usr/bin/env bash
# docs/results.md section 9: a VAE ($1) reconstructing the 32 held-out clips, and a model folder
# ($2) generating them at the shipped 3 steps and the 2 held-out 60-s videos.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=.venv/bin/readtalk
V=$1; M=$2
O=results/refiner/$(basename "$M")
mkdir -p "$O/long"
.venv/bin/python docs/experiments/vae_reconstruct_videos.py --data data/st1000 --vae "$V" \
  --clips 32 --out "$O/recon"
$R eval --pred "$O/recon" --ref data/st1000 --out "$O/recon-eval" --quiet > "$O/recon.txt" 2>&1
$R bench results --model "$M" --data data/st1000 --out "$O/main" --tables main --main-steps 3 \
  --clips 32 --quiet > "$O/main.txt" 2>&1
for id in $(.venv/bin/python -c "from readtalk.data.manifest import load_manifest; print(' '.join(r['id'] for r in load_manifest('data/long60','test')))"); do
  [ -f "$O/long/$id.mp4" ] || $R generate --model "$M" --image data/long60/ref/$id.png \
    --audio data/long60/video/$id.mp4 --out "$O/long/$id.mp4" --quiet
done
$R eval --pred "$O/long" --ref data/long60 --out "$O/long-eval" --clip-frames 9 --quiet \
  > "$O/long.txt" 2>&1
