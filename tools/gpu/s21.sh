#!/usr/bin/env bash
# Session 21: the bench's ten modes on run 19 in two runs (each needs dense, the reference), 3000 frames,
# compiled pieces, memory off; every mode prints a line as it ends (the log is streamed, not buffered):
#   bash tools/gpu/bg.sh a bash tools/gpu/s21.sh COMMIT lsh '[dense,window,tempcache,annsa,annca,fastar]' \
#     && WAIT=540 bash tools/gpu/poll.sh a                       then, back to back:
#   WAIT=540 bash tools/gpu/poll.sh a runs/results/lsh.tgz
#   ... the same with b, quant, '[dense,tempcache_quant,annsa_quant,annca_quant,fastar_quant]'
# Any further arguments are passed to engine.bench (e.g. kernel_choices=..., +twin_params...).
set -u
commit=$1 tag=$2 modes=$3
shift 3
source tools/gpu/setup.sh
o=runs/results/$tag
mkdir -p $o
python3 -m engine.bench out=$o results_json=$o/bench_h100_$tag.json "commit='$commit'" progress=false compile=true \
  "modes=$modes" "$@" 2>&1 | grep --line-buffered -v Warn
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
gzip -f $o/bench.json
tar czf runs/results/$tag.tgz -C runs/results $tag
echo "=== done $(date)"
