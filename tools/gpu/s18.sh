#!/usr/bin/env bash
# Next session's first machine (docs/GPU.md, session 17), on the bundle:  bash tools/gpu/bg.sh s18 bash tools/gpu/s18.sh COMMIT
# then  WAIT=540 bash tools/gpu/poll.sh s18 'runs/results/s18.tgz'  back to back.
# 1. the CUDA tests not run on a GPU since the last changes (tests/test_triton_decay.py after the kernel_decay fix;
# the play and model files since the defaults changed); 2. the launch settings of the top-1 search and the combine
# at fastar's shapes (tools/gpu/tune_small_kernels.py); 3. profile_step of fastar as it stands, and its trace.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s18
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_play_headless.py \
  tests/test_play_window.py tests/test_model_speed.py tests/test_model_checkpoint.py 2>&1 | grep -v Warn | tail -6 \
  | tee $o/tests.txt
tar czf runs/results/s18.tgz -C runs/results s18
python3 tools/gpu/tune_small_kernels.py --out $o/tune.json 2>&1 | tail -32 | tee $o/tune.txt
tar czf runs/results/s18.tgz -C runs/results s18
python3 tools/profile_step.py --attention fastar --context 400 --frames 100 --no-profile --compile 2>&1 \
  | grep -E "^(device|step|host)|rror" | tee $o/speed.txt
# a trace to compare with session 17's (python tools/trace_summary.py --kernels): the q/k norm kernel's launch
python3 tools/profile_step.py --attention fastar --context 400 --frames 30 --compile --trace $o/fastar_trace.json \
  2>&1 | grep -E "^(device|step|host|runtime)" | tee $o/fastar_profile.txt
gzip -f $o/fastar_trace.json
python3 tools/trace_summary.py --kernels $o/fastar_trace.json.gz | head -20 | tee $o/kernels.txt
tar czf runs/results/s18.tgz -C runs/results s18
echo "=== done $(date) commit $commit"
