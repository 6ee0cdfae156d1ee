#!/usr/bin/env bash
# Session 18, last machine: the tuned tiles (triton_decay's short tile, the top-1 search, the combine) on the
# checkpoint at worlds/maze/weights (COMMIT names it):  bash tools/gpu/bg.sh s18d bash tools/gpu/s18d.sh COMMIT
# then WAIT=540 bash tools/gpu/poll.sh s18d 'runs/results/s18d.tgz'
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s18d
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_cache_kernels.py 2>&1 \
  | grep -v Warn | tail -6 | tee $o/tests.txt
python3 tools/profile_step.py --attention fastar --context 400 --frames 100 --no-profile --compile 2>&1 \
  | grep -E "^(device|step|host)|rror" | tee $o/speed.txt
tar czf runs/results/s18d.tgz -C runs/results s18d
python3 -m engine.bench out=runs/results/b18d results_json=$o/b18d.json "commit='$commit'" progress=false \
  "modes=[dense,window,fastar]" compile=true 2>&1 | grep -v Warn | tail -20
cp runs/results/b18d/table.txt $o/b18d_table.txt; cp runs/results/b18d/bench.json $o/b18d_bench.json
gzip -f $o/b18d_bench.json; cp runs/results/b18d/*.png $o/ 2>/dev/null
tar czf runs/results/s18d.tgz -C runs/results s18d
echo "=== done $(date)"
