#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/stream
ids=$(.venv/bin/python -c "from readtalk.data.manifest import load_manifest; print(' '.join(r['id'] for r in load_manifest('data/long60','test')))")
for cf in 9 25; do
  mkdir -p $R/gen$cf
  for id in $ids; do
    [ -f $R/gen$cf/$id.mp4 ] || .venv/bin/readtalk generate --image data/long60/ref/$id.png --audio data/long60/video/$id.mp4 \
      --out $R/gen$cf/$id.mp4 --clip-frames $cf --quiet
  done
  .venv/bin/readtalk eval --pred $R/gen$cf --ref data/long60 --out $R/eval$cf --clip-frames $cf --quiet > $R/eval$cf.txt
done
for cf in 25 9; do
  .venv/bin/readtalk bench stream --seconds 60 --clip-frames $cf --json $R/fast$cf.json > $R/fast$cf.txt 2>&1
done
for cf in 17 9; do
  .venv/bin/readtalk bench stream --seconds 60 --paced --clip-frames $cf --json $R/paced$cf.json > $R/paced$cf.txt 2>&1
done
echo done > $R/done2
