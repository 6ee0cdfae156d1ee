#!/usr/bin/env bash
# Session 22: AnnSA's bucketed path skips each bucket's keys past the decay horizon, and computes its per-key
# decay once a frame. The CUDA tests that cover it, then the bench of dense and the two AnnSA modes over
# 3000 frames (compiled pieces, memory off):
#   bash tools/gpu/bg.sh c bash tools/gpu/s22.sh COMMIT [TAG] [MODES] && WAIT=540 bash tools/gpu/poll.sh c
#   WAIT=540 bash tools/gpu/poll.sh c runs/results/annsa_hz.tgz                 (back to back)
set -u
commit=$1
source tools/gpu/setup.sh
python3 -m pytest -q -p no:cacheprovider tests/test_attention_fastar.py tests/test_model_decay.py \
  -k "annsa or annca or bucket or varlen or horizon" 2>&1 | tail -n 5
python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py -k "bucketed" 2>&1 | tail -n 3
bash tools/gpu/s21.sh "$commit" "${2:-annsa_hz}" "${3:-[dense,annsa,annsa_quant]}"
