#!/usr/bin/env bash
# Next session's first machine (docs/GPU.md, session 15), on the bundle:  bash tools/gpu/bg.sh s16 bash tools/gpu/s16.sh COMMIT
# 1. the CUDA tests of what landed after session 15's last machine (bucket_kernel=auto's measurement, the
# TempCache bias array); 2. the three-mode benchmark (dense's bucket choice now measured in the run: it prints
# "dense: bucket kernel chosen by measurement ..."); 3. fastar and the window with tempcache.bias_layout=array
# against that dense.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s16
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_attention_fastar.py tests/test_guidance.py \
  tests/test_graphs.py -k "cuda or chooser" 2>&1 | grep -v Warn | tail -12
for run in "b1 [dense,window,fastar]" "b2 [dense,fastar] +mode_params.fastar.tempcache.bias_layout=array"; do
  set -- $run
  python3 -m engine.bench out=runs/results/$1 results_json=$o/$1.json "commit='$commit'" progress=false "modes=$2" \
    compile=true ${3:-} 2>&1 | grep -v Warn | tail -22
  cp runs/results/$1/table.txt $o/$1_table.txt; cp runs/results/$1/bench.json $o/$1_bench.json; gzip -f $o/$1_bench.json
done
# dense's short-context speed with 16- and 64-frame buckets: on triton the kernel never reads the padding, so a
# longer bucket costs no compute and captures 4x less often (profile_step's "commit pass" held ~3 ms a frame of
# captures in session 15)
for bf in 16 64; do
  python3 tools/profile_step.py --attention dense --context 96 --frames 100 --no-profile --compile \
    --params "{\"bucket_frames\": $bf}" 2>&1 | grep -E "^(device|step)|rror" | tee -a $o/speed.txt
done
tar czf runs/results/s16.tgz -C runs/results s16
echo "=== done $(date)"
