#!/usr/bin/env bash
# Host-vs-device profile of a few attention modes on the GPU machine (tools/profile_step.py), one log and one
# chrome trace per row into $OUT:
#   CONTEXT=100 FRAMES=30 bash tools/gpu/profile_modes.sh 'dense {}' 'annsa {"annsa":{"min_frames":100000}}'
# Each row: a mode and its params (JSON). Recall measurement is off (metrics.recall_every 0) in the FAST-AR rows.
set -u
source tools/gpu/setup.sh
out=${OUT:-runs/profile}; mkdir -p "$out"
i=0
for row in "$@"; do
  mode=${row%% *}; params=${row#* }
  [ "$mode" = dense ] || [ "$mode" = window ] || params=$(python3 -c "import json,sys; p=json.loads(sys.argv[1]); p.setdefault('metrics',{})['recall_every']=0; print(json.dumps(p))" "$params")
  i=$((i + 1))
  echo "=== $i: $mode $params (context ${CONTEXT:-100})"
  python3 tools/profile_step.py --attention "$mode" --params "$params" --compile --context ${CONTEXT:-100} \
    --frames ${FRAMES:-30} --trace "$out/trace_$i.json" > "$out/profile_$i.log" 2>&1
  grep -E "^(device|step|host|runtime)|Error" "$out/profile_$i.log"
  gzip -f "$out/trace_$i.json" 2>/dev/null
done
