#!/usr/bin/env bash
# docs/results.md section 8, "The mouth's directions in the loss": the shipped rolling DiT
# fine-tuned 400 more steps with self-rollout phase 3's settings (docs/runs/self-rollout/train.sh),
# with and without the mouth loss (diffusion.mouth_weight). On the 2-core CPU, the runs side by
# side (one thread each, about 22 min).
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=.venv/bin/readtalk
D=src/readtalk/assets/demo
# pair NAME SEED SETTINGS...: runs/NAME<w> for each mouth weight w, side by side (one thread
# each), then each exported as runs/demo-${NAME#dit-}<w>
pair() {
  local name=$1 seed=$2 w
  shift 2
  for w in ${WEIGHTS:-0 1}; do
    OMP_WAIT_POLICY=PASSIVE $R train dit --cache cache/st320-roll --out runs/$name$w \
      --size tiny --steps 400 --set init=$D/dit.safetensors --set diffusion.rolling_context=2 \
      --set train.batch_size=12 --set train.lr=1e-4 --set train.warmup=20 \
      --set diffusion.motion_weight=3 --set train.ckpt_every=50 --set train.eval_every=1000 \
      --set train.seed=$seed --set train.threads=1 --set diffusion.mouth_weight=$w "$@" \
      > runs/$name$w.log 2>&1 &
  done
  wait
  for w in ${WEIGHTS:-0 1}; do
    $R export --vae $D/vae.safetensors --speech $D/speechae.safetensors \
      --dit runs/$name$w/dit.safetensors --out runs/demo-${name#dit-}$w \
      --copy-defaults $D/pipeline.json
  done
}
# cache/st320-roll and runs/dit-roll-distill (phase 3's teacher): docs/runs/self-rollout/train.sh
pair dit-mouth 3 --set diffusion.teacher=runs/dit-roll-distill/dit.safetensors \
  --set diffusion.teacher_guidance=none --set diffusion.self_rollout=5 \
  --set diffusion.p_self=0.9 --set diffusion.rollout_data=0.5
# the same without the teacher or self rollout: the data's velocity as the target, rolling
# windows with the true context and condition dropout, so the DiT is sampled with Split-CFG
# (about 12 min side by side)
pair dit-cfgmouth 4
# measured with Split-CFG (alpha 2, beta 6) at 3 steps:
#   python docs/experiments/guidance_sweep.py --model runs/demo-cfgmouth$w --data data/st1000 \
#     --out results/mouth/cfgmouth$w --clips 32 --steps 3 --alpha 2 --beta 6 --syncnet ...
