#!/usr/bin/env bash
# Session 24: the bench's ten modes at one commit, in two runs of 3000 frames on one machine (each with its own
# dense), after AnnCA's masked default (no host sync): the six LSH modes, then the quantization variants.
#   bash tools/gpu/bg.sh b bash tools/gpu/s24b.sh COMMIT && WAIT=540 bash tools/gpu/poll.sh b   then, back to back:
#   WAIT=540 bash tools/gpu/poll.sh b ...   and finally   bash tools/gpu/poll.sh b runs/results/all6.tgz runs/results/quant5.tgz
set -u
commit=$1
bash tools/gpu/s21.sh $commit all6 '[dense,window,tempcache,annsa,annca,fastar]'
bash tools/gpu/s21.sh $commit quant5 '[dense,tempcache_quant,annsa_quant,annca_quant,fastar_quant]'
