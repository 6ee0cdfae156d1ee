#!/usr/bin/env bash
# Session 20: run 19 as the bundle (run 17 + own_context_rounds=2; tools/gpu/s18t.sh), two stages, one call each:
#   bash tools/gpu/s20.sh eval COMMIT    the evaluation (control_starts now 16), then the CPU default window (12
#                                        frames, memory on) over 3000 frames with contact sheets of flagged chunks
#   bash tools/gpu/s20.sh bench COMMIT   the benchmark (memory off), then dense and fastar with the spatial memory
#                                        on and a dense twin: does the memory pull two rollouts back together?
# Results land in $OUT.
set -u
stage=$1 commit=$2
source tools/gpu/setup.sh
if [ "$stage" = eval ]; then
  python3 -m engine.evaluate out=$OUT/world_model.json stability_frames=3000 "commit='$commit'" 2>&1 | grep -v Warn | tail -24
  python3 tools/stability_probe.py --mode window --params '{"window": 12}' --memory '{"enabled": true}' \
    --frames 3000 --sheets /tmp/sheets_w12 --out $OUT/window12_memory_3000.json 2>&1 | grep -v Warn | tail -4
  [ -d /tmp/sheets_w12 ] && tar czf $OUT/sheets_w12.tgz -C /tmp sheets_w12
else
  python3 -m engine.bench out=/tmp/b20 results_json=$OUT/bench_h100.json "commit='$commit'" progress=false \
    "modes=[dense,window,fastar]" compile=true 2>&1 | grep -v Warn | tail -22
  cp /tmp/b20/table.txt $OUT/table.txt; gzip -c /tmp/b20/bench.json > $OUT/bench.json.gz; cp /tmp/b20/*.png $OUT/ 2>/dev/null
  python3 -m engine.bench out=/tmp/b20m results_json=/tmp/b20m/r.json "commit='$commit'" progress=false \
    "modes=[dense,fastar]" compile=true 'memory={enabled:true}' +twin_params.bucket_kernel=channel 2>&1 \
    | grep -v Warn | tail -14
  mkdir -p $OUT/memory_twin && cp /tmp/b20m/table.txt /tmp/b20m/r.json $OUT/memory_twin/ 2>/dev/null
  gzip -c /tmp/b20m/bench.json > $OUT/memory_twin/bench.json.gz
fi
echo "=== done $(date)"
