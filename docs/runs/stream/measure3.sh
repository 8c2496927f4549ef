#!/usr/bin/env bash
# docs/streaming.md: streaming timings on an otherwise idle machine (group_blend 2, 4 steps)
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=results/stream/t3; mkdir -p $R
for cf in 57 33 25 17; do
  .venv/bin/readtalk bench stream --seconds 60 --clip-frames $cf --json $R/fast$cf.json > $R/fast$cf.txt 2>&1
done
for cf in 57 25 17; do
  .venv/bin/readtalk bench stream --seconds 60 --paced --clip-frames $cf --json $R/paced$cf.json > $R/paced$cf.txt 2>&1
done
.venv/bin/readtalk bench stream --seconds 600 --paced --json $R/paced57-600.json > $R/paced57-600.txt 2>&1
echo done > $R/done
