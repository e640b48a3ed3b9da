#!/usr/bin/env bash
# Waits until the named queues are done or SECONDS have passed, prints the queues' logs, and packs
# the results folder into $OUT/res.tgz (the device tool returns at most 8 files).
#   bash benchmarks/device/collect.sh SECONDS QUEUE ...
R=${R:-/tmp/res}
limit=$1; shift
s=$(date +%s)
while [ $(( $(date +%s) - s )) -lt "$limit" ]; do
  left=0
  for q in "$@"; do [ -e "$R/$q.done" ] || left=1; done
  [ $left = 0 ] && break
  sleep 5
done
for q in "$@"; do echo "--- $q $( [ -e "$R/$q.done" ] && echo done || echo running)"; cat "$R/$q.log" 2>/dev/null; done
nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader 2>/dev/null
tar -czf "${OUT:-/tmp}/res.tgz" -C "$(dirname "$R")" "$(basename "$R")" && ls -la "${OUT:-/tmp}/res.tgz"
