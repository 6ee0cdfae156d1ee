#!/usr/bin/env bash
# The evaluation of a candidate copied over worlds/maze/weights (COMMIT names it, e.g. abc1234-run16):
#   bash tools/gpu/bg.sh s18e bash tools/gpu/s18e.sh COMMIT
#   WAIT=540 bash tools/gpu/poll.sh s18e 'runs/results/s18e.tgz'
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s18e
mkdir -p $o
python3 -m engine.evaluate out=$o/world_model.json stability_frames=3000 "commit='$commit'" 2>&1 | tail -30 | tee $o/eval.txt
tar czf runs/results/s18e.tgz -C runs/results s18e
echo "=== done $(date)"
