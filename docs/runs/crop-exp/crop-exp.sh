#!/usr/bin/env bash
# frame VAE phase 1 on 128-px crops (half of them holding the mouth) from a bank of 8 frames per
# clip, batch 32: compare with runs/recipe3/frame-vae (whole frames, batch 16, 600 steps, 11 min)
cd /work/main
.venv/bin/readtalk train vae --quiet --data data/st1000 --out runs/crop-exp --preset res-small \
    --steps 1800 --set clip_frames=1 --set train.batch_size=32 --set eval_frames=1 \
    --set eval_clips=32 --set train.lr=1e-3 --set train.warmup=20 --set train.eval_every=300 \
    --set crop=128 --set crop_mouth=0.5 --set frame_bank=8 --set train.threads=2
