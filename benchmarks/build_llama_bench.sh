#!/usr/bin/env bash
# Build llama.cpp's llama-bench from the same llama-cpp-python sdist and the same CMAKE_ARGS as
# the installed wheel, outside the repository, so mateperf's pp/tg figures can be checked
# against the reference tool on the same model, threads and build flags.
#   benchmarks/build_llama_bench.sh [BUILD_DIR]   -> prints the path of the llama-bench binary
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MATEPERF_VENV:-.venv}"
BUILD="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/mateperf/llama-bench}"
version="$("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
args="$(cat "$VENV/mateperf-llama-cmake-args.txt")"
bin="$BUILD/build/bin/llama-bench"
if [ ! -x "$bin" ]; then
  mkdir -p "$BUILD"
  "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$BUILD" \
    "llama-cpp-python==$version" >&2
  tar xzf "$BUILD"/llama_cpp_python-"$version".tar.gz -C "$BUILD"
  src="$BUILD/llama_cpp_python-$version/vendor/llama.cpp"
  # shellcheck disable=SC2086
  cmake -S "$src" -B "$BUILD/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    $args >&2
  cmake --build "$BUILD/build" --target llama-bench -j "$(nproc)" >&2
fi
echo "$bin"
