#!/usr/bin/env bash
# Builds .whl/: the wheels the lent GPU machine lacks (Python 3.12, torch 2.11 preinstalled, no
# registry there; ../shared/ENVIRONMENT.md). About 23 MB, under the 64 MiB a device call carries.
# Run here after scripts/setup_cpu.sh; versions follow .venv, so both machines run the same stack.
#
# On the GPU machine (carry .whl):
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=".venv/bin/pip"
PY=".venv/bin/python"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
rm -f .whl/*.whl

# Binary wheels for CPython 3.12 on x86_64, and pure-Python ones, as published. Not huggingface_hub:
# the machine has one that transformers accepts, and ours (2.x) needs httpx2, which it lacks.
PLATFORM="--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux2014_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64"
PUBLISHED=""
for pkg in pydantic pydantic-core annotated-types typing-inspection transformers tokenizers \
           hydra-core omegaconf portalocker msgpack einops hjson py-cpuinfo; do
  PUBLISHED+=" $pkg==$(version "$pkg")"
done
# shellcheck disable=SC2086
"$PIP" download -q --no-deps $PLATFORM -d .whl $PUBLISHED

# Sdist-only or built here: deepspeed without its ops (it JIT-compiles them there with nvcc), sam2
# without its CUDA extension (optional; only used for hole filling), iopath, antlr4 (hydra's parser).
BUILT=""
for pkg in deepspeed sam2 iopath antlr4-python3-runtime; do
  BUILT+=" $pkg==$(version "$pkg")"
done
# shellcheck disable=SC2086
DS_BUILD_OPS=0 SAM2_BUILD_CUDA=0 SAM2_BUILD_ALLOW_ERRORS=1 \
  "$PIP" wheel -q --no-deps --no-build-isolation -w .whl $BUILT
du -sh .whl
