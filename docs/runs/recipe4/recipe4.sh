#!/usr/bin/env bash
# The fast recipe as one measured run: scripts/train_demo.sh with its defaults (RECIPE=fast), on
# data/st1000 made beforehand (readtalk synth --out data/st1000 --clips 1000 --size 256
# --frames 121 --seed 0), nothing else running. Stage seconds go to runs/recipe4/times.tsv.
cd "$(dirname "$0")/../../.."
RUNS=runs/recipe4 QUIET=1 scripts/train_demo.sh
