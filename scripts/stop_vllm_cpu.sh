#!/usr/bin/env bash
# Stop vLLM servers started by scripts/start_vllm_cpu.sh, by pid file.
#
#   scripts/stop_vllm_cpu.sh PORT       stop the server on PORT
#   scripts/stop_vllm_cpu.sh            stop every server with a pid file in the run dir
#
# Sends SIGTERM to the server's whole process group (API server + engine core), waits up to
# CAPSIM_VLLM_STOP_TIMEOUT seconds (default 30), then SIGKILL. Removes the pid file.
set -uo pipefail

HOME_DIR="${CAPSIM_VLLM_HOME:-$HOME/.cache/capsim}"
RUN_DIR="${CAPSIM_VLLM_RUN_DIR:-$HOME_DIR/run}"
WAIT="${CAPSIM_VLLM_STOP_TIMEOUT:-30}"

stop_one() {
  local pidfile="$1" pid i
  [ -f "$pidfile" ] || { echo "stop_vllm_cpu: no pid file $pidfile" >&2; return 1; }
  pid="$(cat "$pidfile")"
  if [[ ! "$pid" =~ ^[0-9]+$ ]]; then
    echo "stop_vllm_cpu: bad pid file $pidfile" >&2; rm -f "$pidfile"; return 1
  fi
  if ! kill -0 -- "-$pid" 2>/dev/null && ! kill -0 "$pid" 2>/dev/null; then
    echo "stop_vllm_cpu: pid $pid ($pidfile) is not running"
    rm -f "$pidfile"; return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < WAIT * 2; i++)); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 -- "-$pid" 2>/dev/null; then
    echo "stop_vllm_cpu: group $pid still alive after ${WAIT} s; sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
  echo "stop_vllm_cpu: stopped pid $pid ($pidfile)"
}

if [ $# -ge 1 ]; then
  rc=0
  for port in "$@"; do stop_one "$RUN_DIR/vllm-$port.pid" || rc=1; done
  exit $rc
fi
shopt -s nullglob
files=("$RUN_DIR"/vllm-*.pid)
[ ${#files[@]} -gt 0 ] || { echo "stop_vllm_cpu: no pid files in $RUN_DIR"; exit 0; }
for f in "${files[@]}"; do stop_one "$f"; done
