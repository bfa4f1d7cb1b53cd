#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what benchmarks/gpu_device_check.sh needs on the lent GPU
# machine, which has no package registry: the prebuilt CUDA llama-cpp-python and diskcache
# (../shared/gpu), gguf and the PyYAML it imports, tabulate (the reports' tables; for that
# machine's Python 3.12), and
# llama.cpp's projection library from this checkout's llama-cpp-python (the same llama.cpp
# version; the CUDA tarball does not include it). Run it here, then the check in one call.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${MATEPERF_SHARED_GPU:-../shared/gpu}"
PY=.venv/bin/python
mkdir -p .gpu
cp "$SHARED"/llama_cpp-*.tar.xz "$SHARED"/diskcache-*.whl .gpu/
gguf_version="$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))')"
"$PY" -m pip download -q --no-deps -d .gpu --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 "gguf==$gguf_version" "pyyaml>=6" "tabulate>=0.9"
common="$(ls .venv/lib/python3*/site-packages/lib/libllama-common.so.*.*.* | head -1)"
cp "$common" .gpu/libllama-common.so
du -sh .gpu && ls .gpu
