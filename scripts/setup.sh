#!/usr/bin/env bash
# Create .venv and install mateperf with everything it needs, including a llama-cpp-python
# built from source with flags that run on this CPU.
#
# Why not a plain `pip install llama-cpp-python`: its default native build enables every ISA
# the CPU advertises, and on hosts that advertise AMX without the kernel enabling it the AMX
# kernels die with SIGILL. We build with GGML_NATIVE=OFF and list the SIMD sets explicitly.
#
#   CMAKE_ARGS="..."        replaces the computed flags entirely (your own build)
#   MATEPERF_CUDA=1         adds -DGGML_CUDA=on to the computed flags (NVIDIA build)
#   MATEPERF_VENV=path      where the environment goes (default .venv)
#
# The built wheel is kept in ~/.cache/mateperf/wheels/<hash of the flags>/ so a second clone
# (or CI on the same machine) reuses it instead of compiling for five minutes again; different
# flags never share a wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION="0.3.36"
VENV="${MATEPERF_VENV:-.venv}"
EXTRAS="${1:-}"   # e.g. "dev" for the test tools

need_apt=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++ build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [ -z "${CMAKE_ARGS:-}" ]; then
  flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
  has() { [[ " $flags " == *" $1 "* ]]; }
  args="-DGGML_NATIVE=OFF"
  for isa in avx avx2 fma f16c bmi2; do
    has "$isa" && args+=" -DGGML_${isa^^}=ON"
  done
  if has avx512f; then
    args+=" -DGGML_AVX512=ON"
    has avx512vbmi && args+=" -DGGML_AVX512_VBMI=ON"
    has avx512_vnni && args+=" -DGGML_AVX512_VNNI=ON"
    has avx512_bf16 && args+=" -DGGML_AVX512_BF16=ON"
  fi
  # AMX stays off on purpose: see the comment at the top.
  args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  if [ "${MATEPERF_CUDA:-0}" = "1" ]; then
    args+=" -DGGML_CUDA=on"
  fi
  export CMAKE_ARGS="$args"
fi
echo "setup: CMAKE_ARGS=$CMAKE_ARGS"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip wheel

key="$(printf '%s|%s|%s' "$LLAMA_CPP_VERSION" "$CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-16)"
wheel_dir="${XDG_CACHE_HOME:-$HOME/.cache}/mateperf/wheels/$key"
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION from source (about 5 minutes on 2 cores)"
  mkdir -p "$wheel_dir.tmp"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PY" -m pip wheel -q --no-deps --no-binary llama-cpp-python \
    --no-cache-dir -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
  printf '%s\n' "$CMAKE_ARGS" > "$wheel_dir.tmp/CMAKE_ARGS"
  rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
fi
"$PY" -m pip install -q --force-reinstall --no-deps "$wheel_dir"/llama_cpp_python-*.whl
# The host fingerprint reports these flags beside llama.cpp's own system info.
cp "$wheel_dir/CMAKE_ARGS" "$VENV/mateperf-llama-cmake-args.txt"

spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
"$PY" -m pip install -q -e "$spec"
"$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "setup: ready ($VENV)"
