#!/usr/bin/env bash
# docs/streaming.md, "The rolling schedule": the per-latent speech cache, the DiT fine-tuned for
# rolling windows (phase A), then distilled from its own Split-CFG (phase B). On the 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=.venv/bin/readtalk
# speech codes only, per latent (the latents are the augmented cache's): 4.3 min
$R cache --data data/st1000 --speech src/readtalk/assets/demo/speechae.safetensors \
  --out cache/st1000-f57-roll --frames 57 --latents-from cache/st1000-f57-aug \
  --augment 0.6 --speech-context 50 --speech-lookahead 2
# phase A: rolling windows of 1-3 context latents + 1 new, from the shipped DiT (700 steps)
$R train dit --cache cache/st1000-f57-roll --out runs/dit-roll --size tiny --steps 700 \
  --set init=src/readtalk/assets/demo/dit.safetensors --set diffusion.rolling_context=3 \
  --set train.batch_size=12 --set train.lr=2e-4 --set train.warmup=50 \
  --set diffusion.motion_weight=3 --set train.ckpt_every=100 --set train.eval_every=250
# phase B: the student learns phase A's Split-CFG velocity (alpha 2, beta 6): one pass a step
$R train dit --cache cache/st1000-f57-roll --out runs/dit-roll-distill --size tiny --steps 800 \
  --set init=runs/dit-roll/dit.safetensors --set diffusion.teacher=runs/dit-roll/dit.safetensors \
  --set diffusion.rolling_context=3 --set train.batch_size=12 --set train.lr=2e-4 \
  --set train.warmup=50 --set diffusion.motion_weight=3 --set train.ckpt_every=100 \
  --set train.eval_every=400
for run in dit-roll dit-roll-distill; do
  $R export --vae src/readtalk/assets/demo/vae.safetensors \
    --speech src/readtalk/assets/demo/speechae.safetensors --dit runs/$run/dit.safetensors \
    --out runs/demo-${run#dit-} --copy-defaults src/readtalk/assets/demo/pipeline.json
done
