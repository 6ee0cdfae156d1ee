#!/usr/bin/env bash
# Session 17, third machine:  bash tools/gpu/bg.sh s17c bash tools/gpu/s17c.sh COMMIT
# then  WAIT=540 bash tools/gpu/poll.sh s17c 'runs/results/s17c.tgz'  back to back.
# triton_decay's combine issues its chunks' loads together and writes (B, n, H, D); GraphedPass's static
# output buffer is stored (B, N, H, D), so the output projection reads it without a transpose kernel.
# 1. the CUDA tests of the kernels, the graphs and what the defaults touched since session 16; 2. profile_step;
# 3. the three-mode benchmark; 4. a profiler trace of the bundle's fastar.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s17c
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_graphs.py \
  tests/test_guidance.py tests/test_model_decay.py 2>&1 | grep -v Warn | tail -6 | tee $o/tests.txt
for m in "fastar --context 400" "dense --context 96"; do
  python3 tools/profile_step.py --attention $m --frames 100 --no-profile --compile 2>&1 \
    | grep -E "^(device|step|host)|rror" | tee -a $o/speed.txt
done
python3 -m engine.bench out=runs/results/b17c results_json=$o/b17c.json "commit='$commit'" progress=false \
  "modes=[dense,window,fastar]" compile=true 2>&1 | grep -v Warn | tail -22
cp runs/results/b17c/table.txt $o/b17c_table.txt; cp runs/results/b17c/bench.json $o/b17c_bench.json
gzip -f $o/b17c_bench.json; cp runs/results/b17c/*.png $o/ 2>/dev/null
tar czf runs/results/s17c.tgz -C runs/results s17c
python3 tools/profile_step.py --attention fastar --context 400 --frames 30 --compile --trace $o/fastar_trace.json \
  2>&1 | grep -E "^(device|step|host|runtime)" | tee $o/fastar_profile.txt
gzip -f $o/fastar_trace.json
tar czf runs/results/s17c.tgz -C runs/results s17c
echo "=== done $(date)"
