#!/usr/bin/env bash
# Session 23, the control for engine/compiled.py: dense's 300-frame bench with inductor's deterministic mode
# OFF in two processes, each from empty inductor and triton caches (x, y), then ON from empty caches (z), to
# compare with the first machine's run a (docs/results/determinism_h100_s23/a.bench.json.gz): another machine,
# the same frames?
#   bash tools/gpu/bg.sh f bash tools/gpu/s23c.sh COMMIT && WAIT=540 bash tools/gpu/poll.sh f runs/results/det_off.tgz
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/det_off
mkdir -p $o
for run in x y z; do
  off=0; [ $run = z ] && off=1
  ENGINE_INDUCTOR_DETERMINISTIC=$off TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_$run TRITON_CACHE_DIR=/tmp/triton_$run \
    python3 -m engine.bench out=$o/$run "commit='$commit'" progress=false compile=true frames=300 'modes=[dense]' \
    plots=false one_step=false 2>&1 | grep -v Warn | grep "dense done\|Error\|error" | head -n 5
done
echo "--- deterministic mode off, two processes:"
python3 tools/compare_runs.py $o/x/bench.json $o/y/bench.json
echo "--- deterministic mode on, this machine against the first machine's run a:"
python3 tools/compare_runs.py docs/results/determinism_h100_s23/a.bench.json.gz $o/z/bench.json
for run in x y z; do gzip -f $o/$run/bench.json; rm -f $o/$run/frames.png; done
tar czf runs/results/det_off.tgz -C runs/results det_off
echo "=== control done $(date)"
