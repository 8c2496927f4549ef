#!/usr/bin/env bash
# the fast recipe's frame-VAE stage alone: scripts/train_demo.sh's frame-vae stage with its
# RECIPE=fast defaults (data/st1000 made first)
cd "$(dirname "$0")/../../.."
.venv/bin/readtalk train vae --quiet --data data/st1000 --out runs/recipe4/frame-vae --preset res-small \
    --steps 6000 --set clip_frames=1 --set train.batch_size=32 --set eval_frames=1 --set eval_clips=32 \
    --set mouth_weight=0 --set crop=128 --set crop_mouth=0.5 --set frame_bank=8 --set train.lr=1e-3 \
    --set train.warmup=20 --set train.eval_every=1000 --set train.threads=2 "$@"
