#!/usr/bin/env bash
# docs/stage1.md, "Copying the portrait's detail": the shipped factorised VAE gets a portrait
# refiner; its frame VAE and packer stay frozen, so the latents and the DiT are unchanged.
# Regenerate the data first: readtalk synth --out data/st1000 --clips 1000 --size 256 --frames 121 --seed 0
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=.venv/bin/readtalk
# 600 training clips reconstructed once (4 min), 3,000 steps of 16 frames (12 min on 2 cores)
OMP_WAIT_POLICY=PASSIVE $R train refiner --data data/st1000 --vae src/readtalk/assets/demo/vae.safetensors \
  --out runs/refiner --set clips=600 --set train.log_every=50 "$@"
# the model folder: the shipped one with the refined VAE
mkdir -p runs/demo-refiner
cp src/readtalk/assets/demo/{dit.safetensors,dit-clips.safetensors,speechae.safetensors,pipeline.json} runs/demo-refiner/
cp runs/refiner/vae.safetensors runs/demo-refiner/
