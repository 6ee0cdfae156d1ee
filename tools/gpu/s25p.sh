#!/usr/bin/env bash
# Session 25: where dense's and annsa's frame time goes at a long context (tools/profile_step.py via
# profile_modes.sh), logs and chrome traces into runs/prof:
#   bash tools/gpu/bg.sh p bash tools/gpu/s25p.sh 2000 && WAIT=540 bash tools/gpu/poll.sh p 'runs/prof/*'
set -u
OUT=runs/prof CONTEXT=${1:-2000} FRAMES=${FRAMES:-20} bash tools/gpu/profile_modes.sh 'dense {}' 'annsa {}'
