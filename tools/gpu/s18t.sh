#!/usr/bin/env bash
# Run 16 (docs/MODEL.md): the bundle's own recipe (clips of 32, own-prediction context on half of each batch)
# plus fixed temporal decay slopes on every head and no heading heads, from the bundle; then its evaluation.
#   bash tools/gpu/bg.sh t16 bash tools/gpu/s18t.sh COMMIT [more train overrides, e.g. dit.clip=64 dit.batch=4]
#   WAIT=540 bash tools/gpu/poll.sh t16 'runs/results/s18t.tgz' 'runs/base16/export/*'   (back to back)
# RUN=base17 writes runs/base17 instead; TIME (minutes, the whole training command) defaults to 14.
# Why this run: runs 11-15 added heading heads and the decay together; the decay kept dense alive over 3000
# frames, the heading heads cost mouse controllability and rollout16. This run keeps the first, not the second.
set -u
commit=$1; shift
run=${RUN:-base16}
source tools/gpu/setup.sh
o=runs/results/s18t
mkdir -p $o
python3 -m engine.train preset=base init=worlds/maze/weights out=runs/$run time_budget_min=${TIME:-14} \
  ckpt_every_min=3 progress=false max_step_s=10 "decay_slopes=[0.1,0.1,0.1,0.1,0.01,0.01]" \
  dit.clip=32 dit.batch=8 dit.own_context_prob=0.5 "$@" \
  || { echo "training failed"; exit 1; }
cp runs/$run/log.jsonl $o/${run}_log.jsonl
tar czf runs/results/s18t.tgz -C runs/results s18t
python3 -m engine.evaluate checkpoint=runs/$run/export out=$o/world_model_$run.json stability_frames=3000 \
  "commit='$commit'" 2>&1 | tail -24
tar czf runs/results/s18t.tgz -C runs/results s18t
echo "=== done $(date)"
