#!/usr/bin/env bash
# Per-frame speed with and without the compiled pieces (engine.compile) and the fused top-1 search, plus the
# CUDA tests of both; one call on the GPU machine (~6 min):  bash tools/gpu/check_speed.sh
set -u
source tools/gpu/setup.sh
python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_tempcache_merge.py 2>&1 | tail -3
for m in window fastar; do
  for c in "" "--compile"; do
    python3 tools/profile_step.py --attention $m --frames 200 --no-profile $c 2>&1 | grep -E "^(device|step)|Error"
  done
done
python3 tools/profile_step.py --attention fastar --frames 200 --no-profile --compile \
  --params '{"tempcache": {"top1": "matmul"}}' 2>&1 | grep -E "^(device|step)|Error"
python3 tools/profile_step.py --attention fastar --frames 100 --compile 2>&1 | head -40
