#!/usr/bin/env bash
# Session 24: do pinned kernels repeat another machine's frames? The 300-frame bench of all ten modes (compiled
# pieces, no one-step pass) from empty caches, every kernel pinned to session 23's run p (machine 4), then
# tools/compare_runs.py against that run (exit 1 and the first differing frame per mode that differs).
#   bash tools/gpu/bg.sh a bash tools/gpu/s24a.sh COMMIT && WAIT=540 bash tools/gpu/poll.sh a runs/results/pinned.tgz
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/pinned
ref=docs/results/determinism_h100_s23/all_modes/p.bench.json.gz
mkdir -p $o
t0=$(date +%s)
TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_pin TRITON_CACHE_DIR=/tmp/triton_pin python3 -m engine.bench \
  out=$o/r "commit='$commit'" progress=false compile=true frames=300 plots=false one_step=false \
  kernel_choices=$ref 2>&1 | grep -v Warn | grep "done in\|Error\|error\|pinned\|measured" | head -n 30
echo "run: $(( $(date +%s) - t0 )) s"
python3 tools/compare_runs.py $ref $o/r/bench.json
gzip -f $o/r/bench.json; rm -f $o/r/frames.png
tar czf runs/results/pinned.tgz -C runs/results pinned
echo "=== done $(date)"
