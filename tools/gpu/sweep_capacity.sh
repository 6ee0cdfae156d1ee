#!/usr/bin/env bash
# TempCache capacity sweep on the fastar mode (3000 frames, same trace as tools/gpu/results.sh; dense and window
# from that run are the reference):  bash tools/gpu/bg.sh sweep bash tools/gpu/sweep_capacity.sh COMMIT
set -u
commit=${1:?usage: give the commit}
source tools/gpu/setup.sh
for cap in 16 32; do
  python3 -m engine.bench out=runs/results/sweep_cap$cap "commit='$commit'" progress=false plots=false 'modes=[fastar]' \
    +mode_params.fastar.tempcache.capacity_frames=$cap 2>&1 | grep -E "^(fastar|mode|engine)"
done
