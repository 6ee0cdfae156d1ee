#!/usr/bin/env bash
# Session 16's last machine (docs/GPU.md, session 16), with run 15's export (trained on this session's first
# machine) copied over worlds/maze/weights in the working tree (the bundle and run 15 together exceed the 64 MiB
# that travels), carrying .whl:
#   bash tools/gpu/bg.sh s16c bash tools/gpu/s16c.sh COMMIT
#   WAIT=540 bash tools/gpu/poll.sh s16c 'runs/results/s16c.tgz'     (back to back)
# 1. the CUDA tests the new defaults touch (bias_layout=array, bucket_frames by path); 2. run 15's three-mode
# benchmark at the new defaults; 3. a profiler trace of fastar's step (where its 4.1 ms go); 4. run 15's evaluation.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s16c
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_attention_fastar.py tests/test_graphs.py \
  tests/test_triton_decay.py -k "bias_array or tempcache_equals_the_cpu or bucket or chooser" 2>&1 | grep -v Warn | tail -6
bench() {   # NAME CHECKPOINT
  python3 -m engine.bench out=runs/results/$1 results_json=$o/$1.json "commit='$commit'" progress=false \
    'modes=[dense,window,fastar]' compile=true ${2:+checkpoint=$2} 2>&1 | grep -v Warn | tail -22
  cp runs/results/$1/table.txt $o/$1_table.txt; cp runs/results/$1/bench.json $o/$1_bench.json
  for f in runs/results/$1/*.png; do cp $f $o/$1_$(basename $f); done
  gzip -f $o/$1_bench.json
  tar czf runs/results/s16c.tgz -C runs/results s16c   # what has run so far, in case the machine goes first
}
bench run15 ""
python3 tools/profile_step.py --attention fastar --context 400 --frames 30 --compile --trace $o/fastar_trace.json \
  2>&1 | grep -E "^(device|step|host|runtime)" | tee $o/fastar_profile.txt
gzip -f $o/fastar_trace.json
tar czf runs/results/s16c.tgz -C runs/results s16c
python3 -m engine.evaluate out=$o/world_model_run15.json stability_frames=3000 \
  "commit='$commit'" 2>&1 | tail -18
tar czf runs/results/s16c.tgz -C runs/results s16c
echo "=== done $(date)"
