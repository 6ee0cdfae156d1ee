#!/usr/bin/env bash
# Session 25: the window's fixed layout (graphs while the ring fills) on the H100: the CUDA tests that touch the
# window, then dense and window over 300 frames (compiled pieces, session 24's kernels pinned).
#   bash tools/gpu/bg.sh w bash tools/gpu/s25c.sh COMMIT && WAIT=400 bash tools/gpu/poll.sh w runs/results/s25w.tgz
set -u
commit=$1
source tools/gpu/setup.sh
python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_model_core.py tests/test_attention_fastar.py \
  -k "window" 2>&1 | tail -n 6
bash tools/gpu/s21.sh $commit s25w '[dense,window]' frames=300 plots=false \
  kernel_choices=docs/results/bench_h100_s24_all6/bench.json.gz
