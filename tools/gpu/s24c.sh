#!/usr/bin/env bash
# Session 24: AnnCA alone on dense's self-attention and whole-pass graphs. The CUDA tests that touch it, then
# the 3000-frame bench of dense and the two annca modes (compiled pieces, memory off).
#   bash tools/gpu/bg.sh c bash tools/gpu/s24c.sh COMMIT && WAIT=540 bash tools/gpu/poll.sh c   then, back to back:
#   WAIT=540 bash tools/gpu/poll.sh c runs/results/annca3.tgz
set -u
commit=$1
source tools/gpu/setup.sh
python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_model_decay.py tests/test_attention_fastar.py \
  -k "annca or cuda_graphs_equal_eager or deterministic" 2>&1 | tail -n 8
bash tools/gpu/s21.sh $commit annca3 '[dense,annca,annca_quant]'
