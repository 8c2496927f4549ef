#!/usr/bin/env bash
# docs/serving.md: concurrent paced WebSocket streams against `readtalk serve` (shipped demo
# model), on an otherwise idle machine; then the streaming figures of docs/streaming.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=results/serve; mkdir -p $R
for n in 1 2 3; do
  extra=""; [ $n = 3 ] && extra="--batching"
  .venv/bin/readtalk bench serve --streams $n --seconds 60 $extra --json $R/n$n.json > $R/n$n.txt 2>&1
done
echo phase1 > $R/progress
