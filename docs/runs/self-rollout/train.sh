#!/usr/bin/env bash
# docs/streaming.md, "Self rollout": the rolling DiT fine-tuned on windows whose context it made
# itself, toward its own velocity at the true context (phases 1-2), then half toward the true
# latent (phase 3, shipped). On the 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=.venv/bin/readtalk
D=src/readtalk/assets/demo
# 320 of st1000's training clips and 32 of its test clips (the same files, a shorter manifest);
# data/st1000 is `readtalk synth --out data/st1000 --clips 1000 --size 256 --frames 121 --seed 0`
mkdir -p data/st320
for d in audio ref track video; do ln -sfn ../st1000/$d data/st320/$d; done
cp data/st1000/synthtalk.json data/st320/
.venv/bin/python - <<'PY'
import json
rows = [json.loads(line) for line in open("data/st1000/manifest.jsonl")]
keep = [r for r in rows if r["split"] == "train"][:320] + [r for r in rows if r["split"] == "test"][:32]
open("data/st320/manifest.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in keep))
PY
# latents and per-latent speech codes (6 min)
$R cache --data data/st320 --vae $D/vae.safetensors --speech $D/speechae.safetensors \
  --out cache/st320-roll --frames 57 --augment 0.6 --augment-seed 0 --speech-context 50 \
  --speech-lookahead 2
# the rolling DiT it starts from and learns from: the demo's dit.safetensors before this run
# (runs/dit-roll-distill of docs/runs/rolling/train.sh, as committed in dd329f5)
mkdir -p runs/dit-roll-distill
git show dd329f5:src/readtalk/assets/demo/dit.safetensors > runs/dit-roll-distill/dit.safetensors
T=runs/dit-roll-distill/dit.safetensors
# phase 1: 3/4 of the windows after 1-4 latents the model made itself (400 steps, 12 min)
$R train dit --cache cache/st320-roll --out runs/dit-self --size tiny --steps 400 \
  --set init=$T --set diffusion.teacher=$T \
  --set diffusion.teacher_guidance=none --set diffusion.rolling_context=2 \
  --set diffusion.self_rollout=4 --set diffusion.p_self=0.75 --set train.batch_size=12 \
  --set train.lr=1e-4 --set train.warmup=20 --set diffusion.motion_weight=3 \
  --set train.ckpt_every=50 --set train.eval_every=1000
# phase 2: 9/10 of the windows after 1-5 made latents (600 steps, 27 min sharing the CPU)
$R train dit --cache cache/st320-roll --out runs/dit-self2 --size tiny --steps 600 \
  --set init=runs/dit-self/dit.safetensors --set diffusion.teacher=$T \
  --set diffusion.teacher_guidance=none --set diffusion.rolling_context=2 \
  --set diffusion.self_rollout=5 --set diffusion.p_self=0.9 --set train.batch_size=12 \
  --set train.lr=1.5e-4 --set train.warmup=20 --set diffusion.motion_weight=3 \
  --set train.ckpt_every=50 --set train.eval_every=1000 --set train.seed=1
# phase 3: half of a rolled-out window's target is the true latent itself (400 steps, 15 min)
$R train dit --cache cache/st320-roll --out runs/dit-self3 --size tiny --steps 400 \
  --set init=runs/dit-self2/dit.safetensors --set diffusion.teacher=$T \
  --set diffusion.teacher_guidance=none --set diffusion.rolling_context=2 \
  --set diffusion.self_rollout=5 --set diffusion.p_self=0.9 --set diffusion.rollout_data=0.5 \
  --set train.batch_size=12 --set train.lr=1e-4 --set train.warmup=20 \
  --set diffusion.motion_weight=3 --set train.ckpt_every=50 --set train.eval_every=1000 \
  --set train.seed=2
for run in dit-self dit-self2 dit-self3; do
  $R export --vae $D/vae.safetensors --speech $D/speechae.safetensors \
    --dit runs/$run/dit.safetensors --out runs/demo-${run#dit-} --copy-defaults $D/pipeline.json
done
# the shipped dit.safetensors is runs/demo-self3/dit.safetensors
