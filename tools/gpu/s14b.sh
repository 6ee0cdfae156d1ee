#!/usr/bin/env bash
# Session 14's second machine as one background job, run 12's export over the bundle (docs/GPU.md, session 14):
#   bash tools/gpu/bg.sh s14b bash tools/gpu/s14b.sh COMMIT
# The in-kernel decay's CUDA tests, its synthetic benchmark, then the 3000-frame benchmark with dense on it.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s14b
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_model_decay.py -k "cuda or kernel" 2>&1 | tail -8
python3 tools/decay_kernel_bench.py --out $o/decay_kernel_h100.json 2>&1 | tail -12
python3 -m engine.bench out=runs/results/bench results_json=$o/bench_h100.json "commit='$commit-run12'" progress=false \
  "modes=[dense,window,fastar]" compile=true
cp runs/results/bench/table.txt $o/bench_table.txt; cp runs/results/bench/bench.json $o/bench.json
echo "=== done $(date)"
