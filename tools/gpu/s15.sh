#!/usr/bin/env bash
# Session 15's first machine as one background job, on the bundle (run 3):  bash tools/gpu/bg.sh s15 bash tools/gpu/s15.sh COMMIT
# 1. CUDA tests of the triton kernel, device-side length, triton buckets, auto choice; 2. memory-guidance
# revisit probes (seconds each); 3. dense's short-context speed, channel vs triton buckets; 4. the bundle's
# three-mode benchmark at this commit; 5. dense alone with triton buckets over the whole run.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s15
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_graphs.py -k cuda 2>&1 | tail -15
echo "=== probes $(date)"
for g in 0 3 6 10; do
  python3 tools/recall_probe.py --mode dense --guidance $g --device cuda --out $o/bundle_dense_g$g.json 2>&1 | tail -2
  python3 tools/recall_probe.py --mode dense --guidance $g --true-first-turn --device cuda --out $o/bundle_dense_tft_g$g.json 2>&1 | tail -2
done
python3 tools/recall_probe.py --mode window --device cuda --out $o/bundle_window.json 2>&1 | tail -2
echo "=== short-context speed $(date)"
for k in channel triton; do
  echo "bucket_kernel=$k"
  python3 tools/profile_step.py --attention dense --context 96 --frames 100 --no-profile --compile \
    --params "{\"bucket_kernel\": \"$k\"}" 2>&1 | grep -E "^(device|step)|Error|rror"
done
echo "=== bench $(date)"
python3 -m engine.bench out=runs/results/b1 results_json=$o/b1.json "commit='$commit'" progress=false \
  "modes=[dense,window,fastar]" compile=true 2>&1 | tail -40
cp runs/results/b1/bench.json $o/b1_bench.json 2>/dev/null; gzip -f $o/b1_bench.json
echo "=== bench dense triton buckets $(date)"
python3 -m engine.bench out=runs/results/b2 results_json=$o/b2.json "commit='$commit'" progress=false \
  "modes=[dense]" compile=true +mode_params.dense.bucket_kernel=triton +mode_params.dense.graph_frames=4096 2>&1 | tail -25
cp runs/results/b2/bench.json $o/b2_bench.json 2>/dev/null; gzip -f $o/b2_bench.json
echo "=== done $(date)"
cp runs/results/b1/table.txt $o/b1_table.txt; cp runs/results/b2/table.txt $o/b2_table.txt
for f in runs/results/b1/*.png; do cp $f $o/b1_$(basename $f); done
tar czf runs/results/s15.tgz -C runs/results s15
