#!/usr/bin/env bash
# Session 25: the bars' modes at the current commit, 3000 frames, kernels pinned to session 24's six-mode run
# (so dense repeats its frames on any H100), with dense's twin on the bias-channel path (the same function,
# other rounding): how far two exact dense rollouts of the bundled model drift apart, in the bars' own run.
#   bash tools/gpu/bg.sh b bash tools/gpu/s25b.sh COMMIT && WAIT=560 bash tools/gpu/poll.sh b   then, back to back:
#   WAIT=560 bash tools/gpu/poll.sh b runs/results/s25.tgz
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s25
mkdir -p $o
python3 -m engine.bench out=$o results_json=$o/bench_h100_s25.json "commit='$commit'" progress=false compile=true \
  'modes=[dense,window,tempcache,fastar]' +twin_params.bucket_kernel=channel \
  kernel_choices=docs/results/bench_h100_s24_all6/bench.json.gz 2>&1 | grep --line-buffered -v Warn
gzip -f $o/bench.json
tar czf runs/results/s25.tgz -C runs/results s25
echo "=== done $(date)"
