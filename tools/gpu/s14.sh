#!/usr/bin/env bash
# Session 14's first machine as one background job (docs/GPU.md, session 14), with run 12's export copied over
# the bundle before the call (cp runs/base12/export/* worlds/maze/weights/):
#   bash tools/gpu/bg.sh s14 bash tools/gpu/s14.sh COMMIT
# 1. the CUDA tests of the bucket and horizon code; 2. the benchmark of run 12 (dense now skips keys past its
# decay horizon); 3. run 14 (run 12's recipe with own-prediction context that keeps a true memory);
# 4. run 14's revisit probe. Everything lands under runs/results/s14/ with distinct names.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s14
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_graphs.py tests/test_model_decay.py \
  tests/test_attention_fastar.py 2>&1 | tail -15
TESTS=0 EVAL=0 MODES="[dense,window,fastar]" bash tools/gpu/results.sh $commit-run12 compile=true
cp runs/results/bench/table.txt $o/bench_table.txt; cp runs/results/bench/bench.json $o/bench.json
cp runs/results/bench_h100.json $o/bench_h100.json
echo "=== run 14 training $(date)"
python3 -m engine.train preset=base init=worlds/maze/weights out=runs/base14 time_budget_min=${TIME:-12} \
  ckpt_every_min=3 progress=false max_step_s=10 rope_heading_heads=2 "decay_slopes=[0.1,0.1,0.1,0.1,0.01,0.01]" \
  dit.clip=64 dit.batch=4 dit.own_context_prob=0.5 dit.revisit_prob=0.5 dit.revisit_min_gap=34 \
  dit.revisit_max_gap=60 dit.novelty_weight=2 dit.gap_prob=0.1 dit.own_context_revisits=true \
  dit.own_context_memory=true || { echo "training failed"; exit 1; }
cp runs/base14/log.jsonl $o/run14_log.jsonl
echo "=== run 14 probes $(date)"
for m in dense window; do
  python3 tools/recall_probe.py --checkpoint runs/base14/export --mode $m --device cuda --out $o/run14_$m.json 2>&1 | tail -3
done
python3 tools/recall_probe.py --checkpoint runs/base14/export --mode dense --true-first-turn --device cuda \
  --out $o/run14_dense_true_first_turn.json 2>&1 | tail -3
echo "=== done $(date)"
