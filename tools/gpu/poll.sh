#!/usr/bin/env bash
# Wait up to WAIT seconds (default 540) for job NAME to finish, print its log's tail, then copy the given files
# (globs) to $OUT so they come back: bash tools/gpu/poll.sh NAME 'runs/base/ckpt/*'
set -u
name=$1; shift
wait_s=${WAIT:-540}
for ((i = 0; i < wait_s; i += 10)); do
  [ -f /tmp/jobs/$name/rc ] && break
  sleep 10
done
echo "--- $name: rc=$(cat /tmp/jobs/$name/rc 2>/dev/null || echo running)"
tail -n ${TAIL:-40} /tmp/jobs/$name/log
[ -d /tmp/snap/$name ] && cd /tmp/snap/$name   # bg.sh ran the job in a snapshot of the tree
for g in "$@"; do for f in $g; do [ -f "$f" ] && cp "$f" "$OUT/"; done; done
ls -la "$OUT"
