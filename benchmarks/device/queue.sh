#!/usr/bin/env bash
# Runs named jobs (benchmarks/device/jobs.sh) one after another on the given GPUs, detached from the
# device call that starts it (start it with setsid), so a queue may outlive one call of the device
# tool (10 minutes) while the machine stays warm. Logs and results go under $R (default /tmp/res);
# the queue's log says when each job started, its exit status and seconds; NAME.done marks the end.
#
#   setsid nohup bash benchmarks/device/queue.sh GPUS NAME [--after OTHER[,OTHER]] JOB ... \
#       >/tmp/res/NAME.log 2>&1 </dev/null &
#
# GPUS: CUDA_VISIBLE_DEVICES for the jobs (0, 1 or 0,1). --after waits for other queues' .done.
set -uo pipefail
gpus=$1; name=$2; shift 2
R=${R:-/tmp/res}
mkdir -p "$R"
if [ "${1:-}" = --after ]; then
  for other in ${2//,/ }; do while [ ! -e "$R/$other.done" ]; do sleep 3; done; done
  shift 2
fi
export CUDA_VISIBLE_DEVICES=$gpus PYTHONUNBUFFERED=1 R
. benchmarks/device/jobs.sh
for j in "$@"; do
  echo "== $j start $(date -u +%T) on GPU $gpus"
  s=$(date +%s)
  "job_$j" >"$R/$j.log" 2>&1
  echo "== $j rc=$? $(( $(date +%s) - s )) s"
done
touch "$R/$name.done"
