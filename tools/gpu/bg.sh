#!/usr/bin/env bash
# Start a long job in the background on the GPU machine so that it outlives this call (until the machine goes
# back): bash tools/gpu/bg.sh NAME COMMAND...   Logs to /tmp/jobs/NAME/log; exit status to /tmp/jobs/NAME/rc.
# Poll with: bash tools/gpu/poll.sh NAME [files to copy to $OUT...]
# The job runs in a snapshot of the tree (/tmp/snap/NAME): every call syncs the working tree again, so a job
# that started later commands of a chain from the live tree would run whatever was edited here in between.
set -u
name=$1; shift
rm -rf /tmp/jobs/$name /tmp/snap/$name   # a job started again under one name must not see the last run's rc or log
mkdir -p /tmp/jobs/$name /tmp/snap/$name
cp -a . /tmp/snap/$name/ && cd /tmp/snap/$name
source tools/gpu/setup.sh
# ( ) so that the log holds every command of a chain (a && b), not only the last one
setsid nohup bash -c "( $* ) > /tmp/jobs/$name/log 2>&1; echo \$? > /tmp/jobs/$name/rc" > /dev/null 2>&1 < /dev/null &
echo "started $name (pid $!); log /tmp/jobs/$name/log"
