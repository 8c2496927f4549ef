#!/usr/bin/env bash
# recipe3: shipped-style frame VAE (phase 1 -> phase 3) with cheaper loading, trimmed stages
cd /work/main
RECIPE=shipped RUNS=runs/recipe3 QUIET=1 STATS_CLIPS=200 VAE_STEPS=600 PHASE2_STEPS=0 \
PHASE3_STEPS=2100 PACKER_STEPS=2500 DECODER_PRE_STEPS=200 DECODER_STEPS=400 DIT_STEPS=1500 \
    scripts/train_demo.sh
