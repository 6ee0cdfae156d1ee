#!/usr/bin/env bash
# Session 19: the bundle (run 17) evaluated with the spatial memory on (engine/memory.py), then the benchmark
# of the attention modes on it (memory off, the attention's own memory):
#   bash tools/gpu/bg.sh s19 bash tools/gpu/s19.sh COMMIT && WAIT=540 bash tools/gpu/poll.sh s19 ...
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s19
mkdir -p $o
python3 -m engine.evaluate out=$o/world_model_memory.json stability_frames=3000 "commit='$commit'" \
  memory.enabled=true 2>&1 | tail -30 | tee $o/eval_memory.txt
tar czf runs/results/s19.tgz -C runs/results s19
[ -n "${NOBENCH:-}" ] || python3 -m engine.bench out=runs/results/b19 results_json=$o/b19.json "commit='$commit'" progress=false \
  "modes=[dense,window,fastar]" compile=true 2>&1 | grep -v Warn | tail -20
cp runs/results/b19/table.txt $o/b19_table.txt; cp runs/results/b19/bench.json $o/b19_bench.json
gzip -f $o/b19_bench.json; cp runs/results/b19/*.png $o/ 2>/dev/null
tar czf runs/results/s19.tgz -C runs/results s19
echo "=== done $(date)"
