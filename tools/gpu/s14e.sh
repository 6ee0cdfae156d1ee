#!/usr/bin/env bash
# Session 14's last machine (docs/GPU.md), run 12's export over the bundle: the CUDA tests of the in-kernel
# decay and dense, then the 3000-frame benchmark on the final code.   bash tools/gpu/bg.sh s14e bash tools/gpu/s14e.sh COMMIT
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s14e
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_model_decay.py tests/test_graphs.py \
  -k "cuda or kernel" 2>&1 | tail -4
python3 -m engine.bench out=runs/results/bench results_json=$o/bench_h100.json "commit='$commit-run12'" progress=false \
  "modes=[dense,window,fastar]" compile=true
cp runs/results/bench/table.txt runs/results/bench/bench.json runs/results/bench/*.png $o/
echo "=== done $(date)"
