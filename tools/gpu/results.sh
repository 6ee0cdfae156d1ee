#!/usr/bin/env bash
# The H100 numbers cited in the docs, in one background job (docs/GPU.md):
#   bash tools/gpu/bg.sh results bash tools/gpu/results.sh COMMIT [hydra overrides for bench and evaluate...]
#   e.g. MODES='[dense,window,fastar]' bash tools/gpu/results.sh COMMIT compile=true \
#          +mode_params.fastar.tempcache.overflow=evict
#   WAIT=540 bash tools/gpu/poll.sh results 'runs/results/*'
# TESTS=0 skips the CUDA tests; EVAL=0 skips the evaluation; PROFILE_ARGS='--compile' passes options to the speed probes; ATTN=1 also runs
# the per-layer attention benchmark (engine.attention.bench, synthetic inputs) into runs/results/attention_h100.json;
# PROFILE_PARAMS='{"tempcache": {"layers": null}}' adds a fastar speed probe with those params. Order: the CUDA
# tests, the benchmark, the speed probes, the attention benchmark, the evaluation (the benchmark is what a lost
# machine must not cost).
# Results go under runs/results/ (ignored): a run's copy of the working tree is re-synced by every later call,
# which removes files written into tracked folders (docs/) on the machine.
set -u
PROFILE_ARGS=${PROFILE_ARGS:-}
commit=${1:?usage: give the commit}
shift || true
source tools/gpu/setup.sh
mkdir -p runs/results
[ "${TESTS:-1}" = 0 ] || python3 -m pytest -q -p no:cacheprovider -p no:warnings -p no:logging --tb=short tests/test_graphs.py tests/test_tempcache_merge.py tests/test_attention_fastar.py \
  2>&1 | tail -40
python3 -m engine.bench out=runs/results/bench results_json=runs/results/bench_h100.json "commit='$commit'" progress=false \
  "modes=${MODES:-[dense,window,tempcache,fastar,tempcache_quant,fastar_quant]}" "$@"
for m in dense window fastar; do
  python3 tools/profile_step.py --attention $m --frames 200 --no-profile $PROFILE_ARGS 2>&1 | grep -E "^(device|step)|Error"
done
[ -n "${PROFILE_PARAMS:-}" ] && python3 tools/profile_step.py --attention fastar --frames 200 --no-profile $PROFILE_ARGS \
  --params "$PROFILE_PARAMS" 2>&1 | grep -E "^(device|step)|Error"
[ "${ATTN:-0}" = 1 ] && python3 -m engine.attention.bench --reps 10 --out runs/results/attention_h100.json 2>&1 | tail -30
[ "${EVAL:-1}" = 0 ] || python3 -m engine.evaluate out=runs/results/world_model.json stability_frames=1000 "commit='$commit'" \
  $(printf '%s\n' "$@" | grep -E '^(checkpoint)=' || true)
