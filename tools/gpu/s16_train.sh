#!/usr/bin/env bash
# A model of run 12's kind again, from the bundle in one stint (docs/GPU.md, session 15), then its memory-guidance
# probes and its evaluation with and without guidance, as one background job:
#   bash tools/gpu/bg.sh train bash tools/gpu/s16_train.sh COMMIT
#   WAIT=540 bash tools/gpu/poll.sh train 'runs/base15/log.jsonl' 'runs/results/s16t.tgz' 'runs/base15/export/*'
# (poll back to back: the machine goes back 30 s after a call ends, and after 30 minutes held: TIME=16 minutes
# of training by default leaves ~10 for the probes and the two evaluations, the guided one on dense alone).
# Bring the export home (3 shards under 16 MiB) and decide in the same session whether it is bundled.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s16t
mkdir -p $o
python3 -m engine.train preset=base init=worlds/maze/weights out=runs/base15 time_budget_min=${TIME:-16} \
  ckpt_every_min=3 progress=false max_step_s=10 rope_heading_heads=2 "decay_slopes=[0.1,0.1,0.1,0.1,0.01,0.01]" \
  dit.clip=64 dit.batch=4 dit.own_context_prob=0.5 dit.revisit_prob=0.5 dit.revisit_min_gap=34 \
  dit.revisit_max_gap=60 dit.novelty_weight=2 dit.gap_prob=0.1 dit.own_context_revisits=false \
  || { echo "training failed"; exit 1; }
for g in 0 3 6; do
  python3 tools/recall_probe.py --checkpoint runs/base15/export --mode dense --guidance $g --device cuda \
    --out $o/run15_dense_g$g.json 2>&1 | tail -1 | cut -c1-300
done
python3 tools/recall_probe.py --checkpoint runs/base15/export --mode window --device cuda --out $o/run15_window.json \
  2>&1 | tail -1 | cut -c1-300
python3 -m engine.evaluate checkpoint=runs/base15/export out=$o/world_model_run15.json stability_frames=3000 \
  "commit='$commit'" 2>&1 | tail -18
python3 -m engine.evaluate checkpoint=runs/base15/export out=$o/world_model_run15_g3.json stability_frames=3000 \
  guidance=3 "stability_modes=[dense]" "commit='$commit'" 2>&1 | tail -18
tar czf runs/results/s16t.tgz -C runs/results s16t
echo "=== done $(date)"
