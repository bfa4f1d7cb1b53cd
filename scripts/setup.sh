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
#   MATEPERF_PYTHON=python3.10   the interpreter the environment is made from (default python3);
#                           the llama-cpp-python wheel is py3-none, so every Python shares it
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

# The CPU-safe flags (or your CMAKE_ARGS) and the wheel cache, shared with
# benchmarks/llama_cpp_compat.sh.
# shellcheck source=llama_cmake_args.sh
source scripts/llama_cmake_args.sh
echo "setup: CMAKE_ARGS=$CMAKE_ARGS"

[ -x "$VENV/bin/python" ] || "${MATEPERF_PYTHON:-python3}" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip wheel

wheel="$(llama_wheel "$PY" "$LLAMA_CPP_VERSION")"
wheel_dir="$(dirname "$wheel")"
"$PY" -m pip install -q --force-reinstall --no-deps "$wheel"
# The host fingerprint reports these flags beside llama.cpp's own system info.
cp "$wheel_dir/CMAKE_ARGS" "$VENV/mateperf-llama-cmake-args.txt"

spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
"$PY" -m pip install -q -e "$spec"
"$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null
# JupyterLab in this environment opens Markdown (FINAL_RESULTS.md, each run's report) as a
# rendered preview on double-click: the project's settings override, not the user's settings.
mkdir -p "$VENV/share/jupyter/lab/settings"
cp scripts/jupyterlab/overrides.json "$VENV/share/jupyter/lab/settings/overrides.json"
echo "setup: ready ($VENV)"
