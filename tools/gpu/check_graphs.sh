#!/usr/bin/env bash
# CUDA-graph checks on the GPU machine (docs/MODEL.md, Speed): exactness tests, then ms/frame of the bundled
# model per attention mode with graphs off and on.   bash tools/gpu/check_graphs.sh [checkpoint-dir]
set -u
source tools/gpu/setup.sh
python3 -m pytest -q -x -p no:cacheprovider tests/test_graphs.py tests/test_model_core.py 2>&1 | tail -4
for spec in "dense off" "dense on" "window off" "window on" "fastar on" "tempcache on"; do
  set -- $spec
  python3 tools/profile_step.py --attention $1 --graphs $2 --frames 100 --no-profile 2>&1 | grep -E "^(device|step)|Error"
done
