#!/usr/bin/env bash
# Session 17, fourth machine, on run 15's export copied over worlds/maze/weights (a decay model):
#   bash tools/gpu/bg.sh s17d bash tools/gpu/s17d.sh COMMIT ; WAIT=540 bash tools/gpu/poll.sh s17d 'runs/results/s17d.tgz'
# TempCache's decay added inside triton_decay's kernel (kernels.cache_attention, fastar._setup): 1. the CUDA tests
# of triton_decay; 2. fastar's step on it against the key-channel layout; 3. dense and fastar over 3000 frames.
set -u
commit=$1
source tools/gpu/setup.sh
o=runs/results/s17d
mkdir -p $o
python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_triton_decay.py 2>&1 | grep -v Warn | tail -4 | tee $o/tests.txt
tar czf runs/results/s17d.tgz -C runs/results s17d
for p in '{}' '{"tempcache": {"bias_layout": "channel"}}'; do
  python3 tools/profile_step.py --attention fastar --context 400 --frames 100 --no-profile --compile --params "$p" 2>&1 \
    | grep -E "^(device|step|host)|rror" | tee -a $o/speed.txt
done
tar czf runs/results/s17d.tgz -C runs/results s17d
python3 -m engine.bench out=runs/results/b17d results_json=$o/b17d.json "commit='$commit-run15'" progress=false \
  "modes=[dense,fastar]" compile=true one_step=false 2>&1 | grep -v Warn | tail -16
cp runs/results/b17d/table.txt $o/b17d_table.txt
tar czf runs/results/s17d.tgz -C runs/results s17d
echo "=== done $(date)"
