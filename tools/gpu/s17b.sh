#!/usr/bin/env bash
# Session 17, second machine:  bash tools/gpu/bg.sh s17b bash tools/gpu/s17b.sh COMMIT
# then  WAIT=540 bash tools/gpu/poll.sh s17b 'runs/results/s17b.tgz'  back to back.
# The step hands its frame out before the commit pass runs (NeuralEnv._generate) and fused_writes is on by
# default: 1. the CUDA tests of that order, the fused writes and the bench; 2. profile_step of fastar and dense;
# 3. the three-mode benchmark on the defaults (its frame time is now the interval between frames' ends);
# 4. a profiler trace of the bundle's fastar.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s17b
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_graphs.py tests/test_cache_kernels.py tests/test_bench.py \
  2>&1 | grep -v Warn | tail -4 | tee $o/tests.txt
for m in "fastar --context 400" "dense --context 96"; do
  python3 tools/profile_step.py --attention $m --frames 100 --no-profile --compile 2>&1 \
    | grep -E "^(device|step|host)|rror" | tee -a $o/speed.txt
done
python3 -m engine.bench out=runs/results/b17 results_json=$o/b17.json "commit='$commit'" progress=false \
  "modes=[dense,window,fastar]" compile=true 2>&1 | grep -v Warn | tail -22
cp runs/results/b17/table.txt $o/b17_table.txt; cp runs/results/b17/bench.json $o/b17_bench.json; gzip -f $o/b17_bench.json
cp runs/results/b17/*.png $o/ 2>/dev/null
tar czf runs/results/s17b.tgz -C runs/results s17b
python3 tools/profile_step.py --attention fastar --context 400 --frames 30 --compile --trace $o/fastar_trace.json \
  2>&1 | grep -E "^(device|step|host|runtime)" | tee $o/fastar_profile.txt
gzip -f $o/fastar_trace.json
tar czf runs/results/s17b.tgz -C runs/results s17b
echo "=== done $(date)"
