#!/usr/bin/env bash
# Session 23: do all ten modes repeat their frames from one process to the next? The 300-frame bench of every
# mode (compiled pieces, no one-step pass) in two processes, each from empty inductor and triton caches, then
# tools/compare_runs.py (exit 1 and the first differing frame per mode that differs).
#   bash tools/gpu/bg.sh k bash tools/gpu/s23d.sh COMMIT && WAIT=540 bash tools/gpu/poll.sh k runs/results/det_all.tgz
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/det_all
mkdir -p $o
for run in p q; do
  t0=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_$run TRITON_CACHE_DIR=/tmp/triton_$run python3 -m engine.bench \
    out=$o/$run "commit='$commit'" progress=false compile=true frames=300 plots=false one_step=false 2>&1 \
    | grep -v Warn | grep "done in\|Error\|error" | head -n 12
  echo "run $run: $(( $(date +%s) - t0 )) s"
done
python3 tools/compare_runs.py $o/p/bench.json $o/q/bench.json
for run in p q; do gzip -f $o/$run/bench.json; rm -f $o/$run/frames.png; done
tar czf runs/results/det_all.tgz -C runs/results det_all
echo "=== done $(date)"
