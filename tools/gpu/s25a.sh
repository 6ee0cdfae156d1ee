#!/usr/bin/env bash
# Session 25: the whole test suite on the H100 (pygame's wheel stays home: test_play_keys is left out), written
# to a log as it goes, with the 30 slowest tests, so that a machine taken back mid-run still leaves the log.
#   bash tools/gpu/bg.sh t bash tools/gpu/s25a.sh && WAIT=570 bash tools/gpu/poll.sh t runs/results/s25tests.log
set -u
source tools/gpu/setup.sh
mkdir -p runs/results
python3 -m pytest -q -p no:cacheprovider -rfEs --durations=30 --ignore=tests/test_play_keys.py tests \
  > runs/results/s25tests.log 2>&1
echo "pytest rc=$?" >> runs/results/s25tests.log
tail -n 60 runs/results/s25tests.log
