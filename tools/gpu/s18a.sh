#!/usr/bin/env bash
# The CUDA tests not run on a GPU since session 17's last changes (kernel_decay fix, the env's reused pinned
# buffer and event), beside run 16's training (correctness only; no timings in this job):
#   bash tools/gpu/bg.sh s18a bash tools/gpu/s18a.sh
set -u
source tools/gpu/setup.sh
o=runs/results/s18a
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py tests/test_graphs.py \
  tests/test_play_headless.py tests/test_play_window.py tests/test_model_speed.py tests/test_model_checkpoint.py \
  2>&1 | grep -v Warn | tail -30 | tee $o/tests.txt
tar czf runs/results/s18a.tgz -C runs/results s18a
echo "=== done $(date)"
