#!/usr/bin/env bash
# Next session's first machine (docs/GPU.md, session 16), on the bundle:  bash tools/gpu/bg.sh s17 bash tools/gpu/s17.sh COMMIT
# then  WAIT=540 bash tools/gpu/poll.sh s17 'runs/results/s17.tgz'  back to back.
# 1. the CUDA tests of the fused scratch write (engine/cache_kernels.py) and of the graphs; 2. fastar's and dense's
# step with and without it (profile_step: step, sample, commit, host); 3. the three-mode benchmark with it, the
# same run's dense and fastar without it for the same machine's ratio; 4. a profiler trace of the bundle's fastar.
# Run on a checkout of 427d8b4, as session 17 did: --fused-writes was a switch there (on/off/auto since 0400b87).
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s17
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_cache_kernels.py tests/test_graphs.py 2>&1 | grep -v Warn | tail -4
for fw in "" --fused-writes; do
  for m in "fastar --context 400" "dense --context 96"; do
    python3 tools/profile_step.py --attention $m --frames 100 --no-profile --compile $fw 2>&1 \
      | grep -E "^(device|step|host)|rror" | tee -a $o/speed.txt
  done
done
for run in "fw1 [dense,window,fastar] fused_writes=true" "fw0 [dense,fastar] fused_writes=false"; do
  set -- $run
  python3 -m engine.bench out=runs/results/$1 results_json=$o/$1.json "commit='$commit'" progress=false "modes=$2" \
    compile=true $3 2>&1 | grep -v Warn | tail -22
  cp runs/results/$1/table.txt $o/$1_table.txt; cp runs/results/$1/bench.json $o/$1_bench.json; gzip -f $o/$1_bench.json
  tar czf runs/results/s17.tgz -C runs/results s17
done
# the bundle's fastar as a profiler trace (session 16's was run 15's, on the channel layout)
python3 tools/profile_step.py --attention fastar --context 400 --frames 30 --compile --trace $o/fastar_trace.json \
  2>&1 | grep -E "^(device|step|host|runtime)" | tee $o/fastar_profile.txt
gzip -f $o/fastar_trace.json
tar czf runs/results/s17.tgz -C runs/results s17
echo "=== done $(date)"
