#!/usr/bin/env bash
# Session 20: every attention mode on run 19 (the bench's default ten), 3000 frames, compiled pieces, memory off:
#   bash tools/gpu/bg.sh all bash tools/gpu/s20b.sh COMMIT && WAIT=540 bash tools/gpu/poll.sh all
#   WAIT=540 bash tools/gpu/poll.sh all 'runs/results/s20b.tgz'        (back to back)
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s20b
mkdir -p $o
python3 -m engine.bench out=$o results_json=$o/bench_h100_all.json commit=$commit progress=false compile=true \
  2>&1 | grep -v Warn | tail -40
gzip -f $o/bench.json
tar czf runs/results/s20b.tgz -C runs/results s20b
echo "=== done $(date)"
