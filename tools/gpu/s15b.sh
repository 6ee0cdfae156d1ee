#!/usr/bin/env bash
# Session 15's second machine (bundle): triton_split as a measured candidate everywhere, dense's buckets on
# triton by default.  bash tools/gpu/bg.sh s15b bash tools/gpu/s15b.sh COMMIT
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s15b
mkdir -p $o
echo "=== short-context speed $(date)"
for m in dense window fastar; do
  python3 tools/profile_step.py --attention $m --context 96 --frames 100 --no-profile --compile 2>&1 \
    | grep -E "^(device|step)|rror" | tee -a $o/speed.txt
done
echo "=== bench $(date)"
python3 -m engine.bench out=runs/results/b3 results_json=$o/b3.json "commit='$commit'" progress=false \
  "modes=[dense,window,fastar]" compile=true 2>&1 | grep -v Warn | tail -30
cp runs/results/b3/bench.json $o/b3_bench.json; gzip -f $o/b3_bench.json
cp runs/results/b3/table.txt $o/b3_table.txt; for f in runs/results/b3/*.png; do cp $f $o/b3_$(basename $f); done
tar czf runs/results/s15b.tgz -C runs/results s15b
echo "=== tests $(date)"
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_graphs.py \
  tests/test_attention_fastar.py -k "cuda or chooser" 2>&1 | grep -v Warn | tail -25
echo "=== done $(date)"
