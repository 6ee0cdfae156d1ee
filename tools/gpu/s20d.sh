#!/usr/bin/env bash
# Session 20, diagnostics before training: the spatial memory's CUDA test, what dense's flagged stability chunks
# look like (contact sheets of each flagged chunk and the one before it), and the CPU default window (12 frames,
# memory on) over 3000 frames on the GPU. Everything lands in $OUT (sheets as one tar).
#   bash tools/gpu/s20d.sh
set -u
source tools/gpu/setup.sh
python3 -m pytest -q tests/test_memory.py 2>&1 | tail -3
python3 tools/stability_probe.py --mode dense --memory '{"enabled": true}' --frames 3000 --sheets /tmp/sheets \
  --out $OUT/dense_memory_3000.json 2>&1 | grep -v Warn | tail -32
python3 tools/stability_probe.py --mode window --params '{"window": 12}' --memory '{"enabled": true}' \
  --frames 3000 --out $OUT/window12_memory_3000.json 2>&1 | grep -v Warn | tail -32
tar czf $OUT/sheets.tgz -C /tmp sheets
