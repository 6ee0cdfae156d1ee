#!/usr/bin/env bash
# Fine-tune, then evaluate the result, as one background job (docs/GPU.md, docs/MODEL.md):
#   bash tools/gpu/bg.sh train bash tools/gpu/train_eval.sh runs/base6 COMMIT dit.revisit_prob=0.4 ...
#   WAIT=540 bash tools/gpu/poll.sh train 'runs/base6/log.jsonl' 'runs/base6/world_model.json' 'runs/base6/export/*'
# Starts from the bundled weights (init=worlds/maze/weights, fresh optimizer) unless an init= override is given;
# TIME=17 (minutes, the whole training command), STABILITY=1000 (frames per mode in the evaluation) and
# MAX_STEP_S=10 (the run stops after DiT steps 3..7 if they average more: a slow path found in 2 minutes, not 20).
set -u
out=$1; commit=$2; shift 2
source tools/gpu/setup.sh
init="init=worlds/maze/weights"
printf '%s\n' "$@" | grep -q '^init=' && init=""
python3 -m engine.train preset=base $init out=$out time_budget_min=${TIME:-17} ckpt_every_min=3 progress=false max_step_s=${MAX_STEP_S:-10} "$@" \
  || { echo "training failed"; exit 1; }
python3 -m engine.evaluate checkpoint=$out/export out=$out/world_model.json stability_frames=${STABILITY:-1000} \
  "commit='$commit'"
