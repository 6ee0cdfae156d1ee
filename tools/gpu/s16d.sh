#!/usr/bin/env bash
# Session 16's closing machine, on the bundle:  bash tools/gpu/bg.sh s16d bash tools/gpu/s16d.sh COMMIT
# The triton kernel's CUDA tests (their call counts now leave out the kernel chooser's triton_split candidate),
# then the three-mode benchmark at this session's defaults (bias_layout=array, 64-frame triton buckets).
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s16d
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py 2>&1 | grep -v Warn | tail -4
python3 -m engine.bench out=runs/results/b3 results_json=$o/bench_h100.json "commit='$commit'" progress=false \
  'modes=[dense,window,fastar]' compile=true 2>&1 | grep -v Warn | tail -22
cp runs/results/b3/table.txt runs/results/b3/*.png $o/; cp runs/results/b3/bench.json $o/; gzip -f $o/bench.json
tar czf runs/results/s16d.tgz -C runs/results s16d
echo "=== done $(date)"
