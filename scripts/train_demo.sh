#!/usr/bin/env bash
# Train the demo model from scratch: every stage, in order (docs/demo_model.md). Run it again
# after an interruption: finished stages are skipped and the interrupted one resumes from its last
# checkpoint. Two recipes, the same stages and model sizes:
#   RECIPE=fast     (default) made to train in about two hours on 2 CPU cores: the frame VAE on
#                   128-px crops (half of them on the mouth) of frames decoded once into memory,
#                   no video phases, fewer packer steps. About 1 h 35 min estimated from its
#                   stages' step times; measured as one run on a 2.8-5x slower 2-core CPU: 5 h 45 min
#                   (docs/demo_model.md)
#   RECIPE=shipped  the settings the shipped demo model was made with (mouth_corr 0.72; about
#                   3 h 20 min on a 2-core CPU before the VAE's one-frame path, docs/speed.md)
# (times on the 2-core machine of docs/demo_model.md; CPUs differ several-fold, docs/speed.md)
#
#   scripts/train_demo.sh                     # SynthTalk data/st1000, runs in runs/recipe
#   RECIPE=shipped RUNS=runs/shipped scripts/train_demo.sh
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
RECIPE=${RECIPE:-fast}
case "$RECIPE" in  # the defaults each recipe gives the knobs below
    fast) d=(200 6000 0 0 2500 200 400 2500 0 0 128 0.5 8 32 1000) ;;
    shipped) d=(0 800 0 1 4000 600 600 2500 1000 3000 0 0 0 16 200) ;;
    *) echo "error: RECIPE must be fast or shipped, got '$RECIPE'" >&2; exit 2 ;;
esac
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
STATS_CLIPS=${STATS_CLIPS:-${d[0]}}  # raw: feature statistics from this many training clips (0: all)
# frame VAE (single frames: phase 1 of docs/stage1.md); VAE_MOUTH_WEIGHT > 0 weighs the loss
# toward the mouth from the start (pixels in the mouth box weigh 1 + VAE_MOUTH_WEIGHT)
VAE_PRESET=${VAE_PRESET:-res-small}
VAE_STEPS=${VAE_STEPS:-${d[1]}}
VAE_MOUTH_WEIGHT=${VAE_MOUTH_WEIGHT:-${d[2]}}
# VAE_CROP > 0: train on crops of that many pixels (a multiple of 32; 0: whole frames), a fraction
# VAE_CROP_MOUTH of them holding the whole mouth; VAE_FRAME_BANK > 0: that many evenly spaced
# frames of every training clip decoded once into memory (docs/stage1.md)
VAE_CROP=${VAE_CROP:-${d[10]}}
VAE_CROP_MOUTH=${VAE_CROP_MOUTH:-${d[11]}}
VAE_FRAME_BANK=${VAE_FRAME_BANK:-${d[12]}}
VAE_BATCH=${VAE_BATCH:-${d[13]}}
VAE_EVAL_EVERY=${VAE_EVAL_EVERY:-${d[14]}}
# the frame VAE goes on as a video VAE (phases 2 and 3 of docs/stage1.md: 17- then 9-frame
# windows, motion-weighted; VIDEO_PHASES=0: neither); its single-frame path is what the packer
# builds on
VIDEO_PHASES=${VIDEO_PHASES:-${d[3]}}
if [ "$VIDEO_PHASES" != 0 ] && [ "$VIDEO_PHASES" != 1 ]; then  # checked before any stage runs
    echo "error: VIDEO_PHASES must be 0 or 1, got '$VIDEO_PHASES'" >&2
    exit 2
fi
PHASE2_STEPS=${PHASE2_STEPS:-${d[8]}}  # 0: no phase 2 (phase 3 starts from phase 1)
PHASE3_STEPS=${PHASE3_STEPS:-${d[9]}}
VAE_EVAL_CLIPS=${VAE_EVAL_CLIPS:-32}
# temporal packer, then its decoder trained on chains (the encoder, and so the latents, kept)
PACKER_STEPS=${PACKER_STEPS:-${d[4]}}
CHAIN_STEPS=${CHAIN_STEPS:-1000}
CHAIN_UNROLL=${CHAIN_UNROLL:-4}  # groups per training chain
PACKER_WINDOW=${PACKER_WINDOW:-33}
PACKER_EVAL_CLIPS=${PACKER_EVAL_CLIPS:-16}
# the frame decoder fine-tuned on single frames with a heavier mouth weight (the encoder, and so
# the latents, kept): the mouth comes back sharp enough for the mouth reader; first
# DECODER_PRE_STEPS at mouth weight 10 and learning rate 3e-4 (0: no such stage)
DECODER_PRE_STEPS=${DECODER_PRE_STEPS:-${d[5]}}
DECODER_STEPS=${DECODER_STEPS:-${d[6]}}
DECODER_MOUTH_WEIGHT=${DECODER_MOUTH_WEIGHT:-30}
DECODER_LR=${DECODER_LR:-2e-4}
# the portrait refiner on the finished VAE (docs/stage1.md, "Copying the portrait's detail"; 0:
# none): latents and DiT unchanged, frames decoded with the portrait's detail
REFINER_STEPS=${REFINER_STEPS:-3000}
REFINER_CLIPS=${REFINER_CLIPS:-600}
# in rounds of REFINER_STEPS: each round continues the last one's refiner with a fresh
# learning-rate schedule, as the shipped refiner was trained (docs/results.md section 9,
# "Trained longer"); the training clips are reconstructed once, by round 1 (the later rounds
# hard-link its refiner_data.pt)
REFINER_ROUNDS=${REFINER_ROUNDS:-4}
if ! [[ "$REFINER_ROUNDS" =~ ^[1-9][0-9]*$ ]]; then  # checked before any stage runs
    echo "error: REFINER_ROUNDS must be a whole number >= 1, got '$REFINER_ROUNDS'" >&2
    exit 2
fi
# latent cache and DiT
WINDOW=${WINDOW:-57}
DIT_SIZE=${DIT_SIZE:-tiny}
DIT_STEPS=${DIT_STEPS:-${d[7]}}
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
    --steps "$VAE_STEPS" --set clip_frames=1 --set train.batch_size="$VAE_BATCH" \
    --set eval_frames=1 --set eval_clips="$VAE_EVAL_CLIPS" --set mouth_weight="$VAE_MOUTH_WEIGHT" \
    --set crop="$VAE_CROP" --set crop_mouth="$VAE_CROP_MOUTH" --set frame_bank="$VAE_FRAME_BANK" \
    --set train.lr=1e-3 --set train.warmup=20 --set train.eval_every="$VAE_EVAL_EVERY" \
    --set train.threads="$THREADS"

frame_vae="$RUNS/frame-vae/vae.safetensors"
if [ "$VIDEO_PHASES" = 1 ] && [ "$PHASE2_STEPS" != 0 ]; then  # PHASE2_STEPS=0: no phase 2
    stage video-vae-2 "$RUNS/video-vae-2/vae.safetensors" "$RUNS/video-vae-2" -- \
        "$RT" train vae "${q[@]}" --data "$DATA" --out "$RUNS/video-vae-2" --init "$frame_vae" \
        --preset "$VAE_PRESET" --steps "$PHASE2_STEPS" --set clip_frames=17 \
        --set train.batch_size=2 --set motion_weight=10 --set train.lr=5e-4 \
        --set train.warmup=20 --set train.eval_every=250 --set eval_clips=8 \
        --set train.threads="$THREADS"
    frame_vae="$RUNS/video-vae-2/vae.safetensors"
fi
if [ "$VIDEO_PHASES" = 1 ]; then
    stage video-vae-3 "$RUNS/video-vae-3/vae.safetensors" "$RUNS/video-vae-3" -- \
        "$RT" train vae "${q[@]}" --data "$DATA" --out "$RUNS/video-vae-3" \
        --init "$frame_vae" --preset "$VAE_PRESET" --steps "$PHASE3_STEPS" \
        --set clip_frames=9 --set train.batch_size=4 --set motion_weight=30 \
        --set motion_scale=0.05 --set train.lr=5e-4 --set train.warmup=20 \
        --set train.eval_every=500 --set eval_clips=8 \
        --set train.threads="$THREADS"
    frame_vae="$RUNS/video-vae-3/vae.safetensors"
fi

stage packer "$RUNS/packer/vae.safetensors" "$RUNS/packer" -- \
    "$RT" train packer "${q[@]}" --data "$DATA" --vae "$frame_vae" \
    --out "$RUNS/packer" --steps "$PACKER_STEPS" --set clips=0 --set residual=true \
    --set window="$PACKER_WINDOW" --set eval_frames="$PACKER_WINDOW" \
    --set eval_clips="$PACKER_EVAL_CLIPS" --set train.threads="$THREADS"

stage packer-chains "$RUNS/fvae/vae.safetensors" "$RUNS/fvae" -- \
    "$RT" train packer "${q[@]}" --data "$DATA" --out "$RUNS/fvae" --steps "$CHAIN_STEPS" \
    --set init="$RUNS/packer/vae.safetensors" --set train_encoder=false --set residual=true \
    --set unroll="$CHAIN_UNROLL" --set window="$PACKER_WINDOW" --set eval_frames="$PACKER_WINDOW" \
    --set eval_clips="$PACKER_EVAL_CLIPS" --set train.lr=5e-4 --set train.threads="$THREADS"

decoder() {  # decoder RUN_DIR INIT STEPS MOUTH_WEIGHT LR [--resume]
    "$RT" train vae "${q[@]}" --data "$DATA" --out "$1" --init "$2" --steps "$3" \
        --set train_encoder=false --set clip_frames=1 --set mouth_weight="$4" \
        --set train.batch_size=16 --set train.lr="$5" --set train.warmup=20 \
        --set train.eval_every=200 --set eval_clips="$PACKER_EVAL_CLIPS" \
        --set eval_frames="$PACKER_WINDOW" --set train.threads="$THREADS" "${@:6}"
}
dec_init="$RUNS/fvae/vae.safetensors"
if [ "$DECODER_PRE_STEPS" != 0 ]; then
    stage frame-decoder-pre "$RUNS/fdec-pre/vae.safetensors" "$RUNS/fdec-pre" -- \
        decoder "$RUNS/fdec-pre" "$dec_init" "$DECODER_PRE_STEPS" 10 3e-4
    dec_init="$RUNS/fdec-pre/vae.safetensors"
fi
stage frame-decoder "$RUNS/fdec/vae.safetensors" "$RUNS/fdec" -- \
    decoder "$RUNS/fdec" "$dec_init" "$DECODER_STEPS" "$DECODER_MOUTH_WEIGHT" "$DECODER_LR"

vae="$RUNS/fdec/vae.safetensors"  # what the model folder ships
if [ "$REFINER_STEPS" != 0 ]; then
    for ((round = 1; round <= REFINER_ROUNDS; round++)); do  # from round 2: continues the last
        name=refiner
        [ "$round" = 1 ] || name="refiner-$round"
        stage "$name" "$RUNS/$name/vae.safetensors" "$RUNS/$name" -- \
            "$RT" train refiner "${q[@]}" --data "$DATA" --vae "$vae" --out "$RUNS/$name" \
            --steps "$REFINER_STEPS" --set clips="$REFINER_CLIPS" --set train.threads="$THREADS"
        vae="$RUNS/$name/vae.safetensors"
    done
fi

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
    "$RT" export --vae "$vae" --speech "$RUNS/speech" --dit "$RUNS/dit" \
    --out "$MODEL" --set steps=4

echo "model: $MODEL (stage seconds in $times)"
echo "try it:  $RT demo --model $MODEL    score it:  $RT bench results --model $MODEL --data $DATA --tables main --out results/recipe"
