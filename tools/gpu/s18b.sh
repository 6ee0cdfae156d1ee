#!/usr/bin/env bash
# Session 18, second machine, on whatever checkpoint sits at worlds/maze/weights (the bundle, or a candidate
# copied over it; say which in COMMIT, e.g. abc1234-run16):
#   bash tools/gpu/bg.sh s18b bash tools/gpu/s18b.sh COMMIT
#   WAIT=540 bash tools/gpu/poll.sh s18b 'runs/results/s18b.tgz'   (back to back)
# 1. launch settings of the top-1 search and the combine (tools/gpu/tune_small_kernels.py); 2. profile_step of
# fastar; 3. the three-mode benchmark plus dense's twin on the channel buckets (the free-rollout floor); 4. a
# profiler trace of fastar.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s18b
mkdir -p $o
python3 tools/gpu/tune_small_kernels.py --out $o/tune.json 2>&1 | tail -40 > $o/tune.txt
tail -12 $o/tune.txt
tar czf runs/results/s18b.tgz -C runs/results s18b
python3 tools/profile_step.py --attention fastar --context 400 --frames 100 --no-profile --compile 2>&1 \
  | grep -E "^(device|step|host)|rror" | tee $o/speed.txt
python3 -m engine.bench out=runs/results/b18 results_json=$o/b18.json "commit='$commit'" progress=false \
  "modes=[dense,window,fastar]" compile=true +twin_params.bucket_kernel=channel 2>&1 | grep -v Warn | tail -24
cp runs/results/b18/table.txt $o/b18_table.txt; cp runs/results/b18/bench.json $o/b18_bench.json
gzip -f $o/b18_bench.json; cp runs/results/b18/*.png $o/ 2>/dev/null
tar czf runs/results/s18b.tgz -C runs/results s18b
# a trace to compare with session 17's (python tools/trace_summary.py --kernels): the q/k norm kernel's launch
python3 tools/profile_step.py --attention fastar --context 400 --frames 30 --compile --trace $o/fastar_trace.json \
  2>&1 | grep -E "^(device|step|host|runtime)" | tee $o/fastar_profile.txt
gzip -f $o/fastar_trace.json
python3 tools/trace_summary.py --kernels $o/fastar_trace.json.gz 2>&1 | head -24 > $o/kernels.txt
tar czf runs/results/s18b.tgz -C runs/results s18b
echo "=== done $(date)"
