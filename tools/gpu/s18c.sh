#!/usr/bin/env bash
# Launch settings of fastar's small kernels, timed inside CUDA graphs (tools/gpu/tune_small_kernels.py):
#   bash tools/gpu/s18c.sh   (about 2-3 minutes; prints the fastest settings per kernel)
set -u
source tools/gpu/setup.sh
o=runs/results/s18c
mkdir -p $o
python3 tools/gpu/tune_small_kernels.py --out $o/tune.json 2>&1 | grep -v Warn | tee $o/tune.txt | tail -45
cp $o/tune.json $o/tune.txt $OUT/ 2>/dev/null
