#!/usr/bin/env bash
# Train the demo model from scratch: every stage, in order, with the settings of the shipped
# model (docs/demo_model.md). Run it again after an interruption: finished stages are skipped and
# the interrupted one resumes from its last checkpoint.
#
#   scripts/train_demo.sh                     # SynthTalk data/st1000, runs in runs/recipe
#   DATA=data/mine RUNS=runs/mine scripts/train_demo.sh   # your own prepared footage
#
# Every size and step count below can be overridden from the environment (the tests run the whole
# recipe with debug sizes and a few steps). Stage times go to $RUNS/times.tsv.
set -euo pipefail

RT=${READTALK:-readtalk}
if ! command -v "$RT" > /dev/null && [ -x .venv/bin/readtalk ]; then RT=.venv/bin/readtalk; fi
DATA=${DATA:-data/st1000}
RUNS=${RUNS:-runs/recipe}
MODEL=${MODEL:-$RUNS/model}
THREADS=${THREADS:-2}
# data (SynthTalk; skipped when $DATA/manifest.jsonl exists, e.g. footage from readtalk prepare)
CLIPS=${CLIPS:-1000}
SIZE=${SIZE:-256}
FRAMES=${FRAMES:-121}
SYNTH_ARGS=${SYNTH_ARGS:-}  # more readtalk synth options, e.g. "--workers 4"
# speech: raw (the demo's: Whisper features straight into the DiT, READ's "SpeechAE absent";
# no training) or pretrain (the SpeechAE, READ's default; docs/results.md, table 2)
SPEECH_MODE=${SPEECH_MODE:-raw}
SPEECH_SIZE=${SPEECH_SIZE:-small}
SPEECH_STEPS=${SPEECH_STEPS:-4000}
STATS_CLIPS=${STATS_CLIPS:-200}  # raw: feature statistics from this many training clips (0: all)
# frame VAE (single frames: phase 1 of docs/stage1.md), its loss weighted toward the mouth from
# the start (pixels in the mouth box weigh 1 + VAE_MOUTH_WEIGHT): the latent and the decoder spend
# their capacity where lip sync is judged
VAE_PRESET=${VAE_PRESET:-res-small}
VAE_STEPS=${VAE_STEPS:-1400}
VAE_MOUTH_WEIGHT=${VAE_MOUTH_WEIGHT:-10}
VAE_EVAL_CLIPS=${VAE_EVAL_CLIPS:-32}
# temporal packer, then its decoder trained on chains (the encoder, and so the latents, kept)
PACKER_STEPS=${PACKER_STEPS:-3000}
CHAIN_STEPS=${CHAIN_STEPS:-1000}
CHAIN_UNROLL=${CHAIN_UNROLL:-4}  # groups per training chain
PACKER_WINDOW=${PACKER_WINDOW:-33}
PACKER_EVAL_CLIPS=${PACKER_EVAL_CLIPS:-16}
# the frame decoder fine-tuned on single frames with a heavier mouth weight (the encoder, and so
# the latents, kept): the mouth comes back sharp enough for the mouth reader
DECODER_STEPS=${DECODER_STEPS:-400}
DECODER_MOUTH_WEIGHT=${DECODER_MOUTH_WEIGHT:-30}
DECODER_LR=${DECODER_LR:-2e-4}
# latent cache and DiT
WINDOW=${WINDOW:-57}
DIT_SIZE=${DIT_SIZE:-tiny}
DIT_STEPS=${DIT_STEPS:-2000}
DIT_EVAL_EVERY=${DIT_EVAL_EVERY:-500}
DIT_SAMPLES=${DIT_SAMPLES:-4}
QUIET=${QUIET:-}  # non-empty: no progress bars

q=()
[ -n "$QUIET" ] && q=(--quiet)
mkdir -p "$RUNS"
times="$RUNS/times.tsv"

# stage NAME DONE_FILE RUN_DIR -- command...: skip when DONE_FILE exists, resume (--resume) when
# RUN_DIR holds a started run; the stage's seconds go to times.tsv
stage() {
    local name=$1 done=$2 run=$3
    shift 4
    if [ -e "$done" ]; then
        echo "== $name: done ($done)"
        return
    fi
    local resume=()
    [ -n "$run" ] && [ -f "$run/config.yaml" ] && resume=(--resume)
    echo "== $name"
    local t0=$SECONDS
    "$@" "${resume[@]}"
    printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$times"
}

stage data "$DATA/manifest.jsonl" "" -- \
    "$RT" synth "${q[@]}" --out "$DATA" --clips "$CLIPS" --size "$SIZE" --frames "$FRAMES" --seed 0 $SYNTH_ARGS

stage speechae "$RUNS/speech/speechae.safetensors" "$RUNS/speech" -- \
    "$RT" train speech "${q[@]}" --data "$DATA" --out "$RUNS/speech" --mode "$SPEECH_MODE" \
    --steps "$SPEECH_STEPS" --set size="$SPEECH_SIZE" --set stats_clips="$STATS_CLIPS" \
    --set train.batch_size=16 --set train.eval_every=1000 \
    --set train.threads="$THREADS"

stage frame-vae "$RUNS/frame-vae/vae.safetensors" "$RUNS/frame-vae" -- \
    "$RT" train vae "${q[@]}" --data "$DATA" --out "$RUNS/frame-vae" --preset "$VAE_PRESET" \
    --steps "$VAE_STEPS" --set clip_frames=1 --set train.batch_size=16 --set eval_frames=1 \
    --set eval_clips="$VAE_EVAL_CLIPS" --set mouth_weight="$VAE_MOUTH_WEIGHT" --set train.lr=1e-3 --set train.warmup=20 \
    --set train.eval_every=200 --set train.threads="$THREADS"

stage packer "$RUNS/packer/vae.safetensors" "$RUNS/packer" -- \
    "$RT" train packer "${q[@]}" --data "$DATA" --vae "$RUNS/frame-vae/vae.safetensors" \
    --out "$RUNS/packer" --steps "$PACKER_STEPS" --set clips=0 --set residual=true \
    --set window="$PACKER_WINDOW" --set eval_frames="$PACKER_WINDOW" \
    --set eval_clips="$PACKER_EVAL_CLIPS" --set train.threads="$THREADS"

stage packer-chains "$RUNS/fvae/vae.safetensors" "$RUNS/fvae" -- \
    "$RT" train packer "${q[@]}" --data "$DATA" --out "$RUNS/fvae" --steps "$CHAIN_STEPS" \
    --set init="$RUNS/packer/vae.safetensors" --set train_encoder=false --set residual=true \
    --set unroll="$CHAIN_UNROLL" --set window="$PACKER_WINDOW" --set eval_frames="$PACKER_WINDOW" \
    --set eval_clips="$PACKER_EVAL_CLIPS" --set train.lr=5e-4 --set train.threads="$THREADS"

stage frame-decoder "$RUNS/fdec/vae.safetensors" "$RUNS/fdec" -- \
    "$RT" train vae "${q[@]}" --data "$DATA" --out "$RUNS/fdec" --init "$RUNS/fvae/vae.safetensors" \
    --steps "$DECODER_STEPS" --set train_encoder=false --set clip_frames=1 \
    --set mouth_weight="$DECODER_MOUTH_WEIGHT" --set train.batch_size=16 \
    --set train.lr="$DECODER_LR" --set train.warmup=20 --set train.eval_every=200 \
    --set eval_clips="$PACKER_EVAL_CLIPS" --set eval_frames="$PACKER_WINDOW" \
    --set train.threads="$THREADS"

# the cache resumes by itself (finished shards are kept) and is done when meta.json exists
stage cache "$RUNS/cache/meta.json" "" -- \
    "$RT" cache "${q[@]}" --data "$DATA" --vae "$RUNS/fdec/vae.safetensors" --speech "$RUNS/speech" \
    --out "$RUNS/cache" --frames "$WINDOW"

stage dit "$RUNS/dit/dit.safetensors" "$RUNS/dit" -- \
    "$RT" train dit "${q[@]}" --cache "$RUNS/cache" --out "$RUNS/dit" --size "$DIT_SIZE" \
    --steps "$DIT_STEPS" --set samples="$DIT_SAMPLES" --set train.eval_every="$DIT_EVAL_EVERY" \
    --set train.lr=5e-4 --set diffusion.motion_weight=3 --set train.warmup=100 \
    --set train.ckpt_every=100 --set train.threads="$THREADS"

# export writes the model folder in seconds (no progress bar, so no --quiet)
stage export "$MODEL/pipeline.json" "" -- \
    "$RT" export --vae "$RUNS/fdec/vae.safetensors" --speech "$RUNS/speech" --dit "$RUNS/dit" \
    --out "$MODEL" --set steps=4

echo "model: $MODEL (stage seconds in $times)"
echo "try it:  $RT demo --model $MODEL    score it:  $RT bench results --model $MODEL --data $DATA --tables main --out results/recipe"
