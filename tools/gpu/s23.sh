#!/usr/bin/env bash
# Session 23. 1) Determinism across processes with inductor's deterministic mode (engine/compiled.py): the same
# 300-frame bench of dense and fastar (compiled pieces) in two processes, each with an empty inductor and
# triton cache (what a fresh machine has: every reduction kernel is compiled and, by default, timed again),
# then a third on the first one's warm cache; tools/compare_runs.py says whether the frames are identical and
# from which frame they part. 2) The CUDA tests of the growing-cache horizon and the 3000-frame bench (s22.sh).
#   bash tools/gpu/bg.sh d bash tools/gpu/s23.sh COMMIT [TAG] [MODES] && WAIT=540 bash tools/gpu/poll.sh d
#   WAIT=540 bash tools/gpu/poll.sh d runs/results/det.tgz runs/results/TAG.tgz      (back to back)
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/det
mkdir -p $o
for run in a b c; do
  cache=$run; [ $run = c ] && cache=a                       # c: a's caches, warm
  t0=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_$cache TRITON_CACHE_DIR=/tmp/triton_$cache python3 -m engine.bench \
    out=$o/$run "commit='$commit'" progress=false compile=true frames=300 'modes=[dense,fastar]' plots=false \
    one_step=false 2>&1 | grep -v Warn | tail -n 6
  echo "run $run (cache $cache): $(( $(date +%s) - t0 )) s"
done
python3 tools/compare_runs.py $o/a/bench.json $o/b/bench.json $o/c/bench.json
for run in a b c; do gzip -f $o/$run/bench.json; done
tar czf runs/results/det.tgz -C runs/results det
echo "=== determinism done $(date)"
bash tools/gpu/s22.sh "$commit" "${2:-hz3}" "${3:-[dense,window,fastar]}"
