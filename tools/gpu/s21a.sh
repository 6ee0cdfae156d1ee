#!/usr/bin/env bash
# Session 21: AnnSA's bucket order with a temporal decay (the bundled model has one): the CUDA tests of the
# bucketed path, the Triton varlen kernel with a per-key logit and the graphs, then (only if they pass) the
# first half of the ten-mode benchmark in the background (tools/gpu/s21.sh):
#   bash tools/gpu/s21a.sh COMMIT && WAIT=400 bash tools/gpu/poll.sh a       then poll back to back
set -u
commit=$1
source tools/gpu/setup.sh
python3 -m pytest -q -x tests/test_attention_fastar.py tests/test_graphs.py tests/test_model_decay.py \
  -k "annsa or bucketed or triton_varlen or decay" 2>&1 | tail -4
[ "${PIPESTATUS[0]}" = 0 ] || { echo "=== tests failed: no benchmark"; exit 1; }
bash tools/gpu/bg.sh a bash tools/gpu/s21.sh $commit lsh '[dense,window,tempcache,annsa,annca,fastar]'
