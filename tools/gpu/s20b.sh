#!/usr/bin/env bash
# Session 20: every attention mode on run 19 (the bench's default ten), 3000 frames, compiled pieces, memory off:
#   bash tools/gpu/bg.sh all bash tools/gpu/s20b.sh COMMIT && WAIT=540 bash tools/gpu/poll.sh all
#   WAIT=540 bash tools/gpu/poll.sh all 'runs/results/s20b.tgz'        (back to back)
# Session 20 started it on 1b9b969 and it had not finished after 21 minutes (GPU memory at 74.9 GB; the log was
# buffered, so which mode ran then is unknown): split the modes over two machines, e.g. MODES='[dense,window,tempcache,annsa,annca,fastar]' bash ...
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s20b
mkdir -p $o
python3 -m engine.bench out=$o results_json=$o/bench_h100_all.json "commit='$commit'" progress=false compile=true \
  ${MODES:+"modes=$MODES"} 2>&1 | grep --line-buffered -v Warn
gzip -f $o/bench.json
tar czf runs/results/s20b.tgz -C runs/results s20b
echo "=== done $(date)"
