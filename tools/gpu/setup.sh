#!/usr/bin/env bash
# Source at the start of every command on the lent GPU machine (see docs/GPU.md):
#   source tools/gpu/setup.sh
# Installs the carried wheels (.whl/: pygame, hydra-core, omegaconf, antlr4 -- what the image lacks) into
# /tmp/site once per machine and puts the repo and them on PYTHONPATH.
if [ ! -f /tmp/site/.done ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.done
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 SDL_VIDEODRIVER=dummy
