#!/usr/bin/env bash
# Session 25: the bars' modes at the current commit, 3000 frames, kernels pinned to session 24's six-mode run
# (so dense repeats its frames on any H100), with dense's twin on the bias-channel buckets (the same function,
# other rounding): how far two exact dense rollouts of the bundled model drift apart, in the bars' own run.
#   bash tools/gpu/bg.sh b bash tools/gpu/s25b.sh COMMIT && WAIT=560 bash tools/gpu/poll.sh b   then, back to back:
#   WAIT=560 bash tools/gpu/poll.sh b runs/results/s25.tgz
set -u
bash tools/gpu/s21.sh $1 s25 '[dense,window,tempcache,fastar]' +twin_params.bucket_kernel=channel \
  kernel_choices=docs/results/bench_h100_s24_all6/bench.json.gz
