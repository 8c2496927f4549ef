#!/usr/bin/env bash
# docs/serving.md: the 10-minute soak (one paced stream, the real-time capacity of this CPU at
# the demo model's settings) and 2 streams at 2 steps; then docs/streaming.md's figures.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=results/serve; mkdir -p $R
.venv/bin/readtalk bench serve --streams 1 --seconds 600 --json $R/soak600.json > $R/soak600.txt 2>&1
.venv/bin/readtalk bench serve --streams 2 --seconds 60 --steps 2 --json $R/n2s2.json > $R/n2s2.txt 2>&1
echo soak > $R/progress
docs/runs/stream/measure3.sh
echo stream >> $R/progress
