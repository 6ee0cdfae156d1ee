#!/usr/bin/env bash
# FAST-AR check after a TempCache change (one synchronous call, ~4 min): CUDA tests, the speed probe, and a
# 3000-frame benchmark of window and fastar (dense from the last full run is the reference).
#   bash tools/gpu/check_fastar.sh COMMIT     (results in runs/results2/, copied to $OUT when set)
set -u
commit=${1:?usage: give the commit}
source tools/gpu/setup.sh
mkdir -p runs/results2
python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py 2>&1 | grep -E "^E  .*(diff|max)|passed|failed|FAILED" | head -8
python3 tools/profile_step.py --attention fastar --frames 200 --no-profile 2>&1 | grep -E "^(device|step)|Error|tempcache"
python3 -m engine.bench out=runs/results2/bench results_json=runs/results2/bench_h100.json "commit='$commit'" progress=false \
  'modes=[window,fastar]' 2>&1 | grep -vE "^\s*$" | tail -14
python3 -c "import json; d=json.load(open('runs/results2/bench/bench.json')); print('merge:', d['modes']['fastar']['series']['final_stats'].get('merge'))"
[ -n "${OUT:-}" ] && cp runs/results2/bench/{bench.json,table.txt,fps_vs_frame.png} runs/results2/bench_h100.json "$OUT"/ 2>/dev/null
