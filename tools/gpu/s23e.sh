#!/usr/bin/env bash
# Session 23: the window's single commit graph. Its CUDA tests (whole-pass graphs and compiled pieces against
# eager), then the 300-frame bench of dense and window (frame times of the warm-up in bench.json).
#   bash tools/gpu/s23e.sh COMMIT     (one call, ~3 minutes)
set -u
commit=$1
source tools/gpu/setup.sh
python3 -m pytest -q -p no:cacheprovider tests/test_graphs.py -k "window" 2>&1 | tail -n 3
o=runs/results/win
python3 -m engine.bench out=$o "commit='$commit'" progress=false compile=true frames=300 'modes=[dense,window]' \
  plots=false one_step=false 2>&1 | grep -v Warn | grep "done in\|^window\|^dense\|Error"
python3 - <<'PY'
import json
d = json.load(open("runs/results/win/bench.json"))
g = d["modes"]["window"]["series"]["gen_ms"]
print("window ms, frames 1-120 every 6:", [round(x, 1) for x in g[0:120:6]])
print("window excluded:", d["modes"]["window"]["series"]["excluded"], "graphs:", d["modes"]["window"]["series"].get("cuda_graphs"))
PY
gzip -f $o/bench.json && cp $o/bench.json.gz $OUT/win.bench.json.gz
