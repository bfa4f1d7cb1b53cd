#!/usr/bin/env bash
# The gpu phase's checks on a lent GPU machine, in ONE device call (about 8 minutes):
#   1. install the prebuilt CUDA llama-cpp-python and the carried wheels (../shared/gpu/README.md)
#   2. pytest -m gpu: monitor, llama.cpp's projection vs the metadata per layer count, device
#      overhead calibration, alerts under a budget, measured VRAM vs both predictions, fallback
#   3. the gpu phase through the library (no papermill there): a layer sweep, a forced
#      fallback on an emulated 1000 MiB card, a default run with the profile comparison
# Everything lands under $OUT as it is produced; each step has a timeout within BUDGET_S.
#
# Before: benchmarks/gpu_prepare.sh here (fills .gpu/). The model: the real default model if
# /tmp/model.gguf is there with the right sha256 (copy it in parts right before, as the README
# says), else one generated with its architecture and shapes (Q8_0 throughout), noted in the log.
# Call:  run(command="bash benchmarks/gpu_device_check.sh", carry=[".gpu"], timeout_s=560)
set -uo pipefail
: "${OUT:?OUT is set by the device machine}"
BUDGET_S="${BUDGET_S:-520}"
T0=$(date +%s)
log() { echo "[check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/check.log"; }
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }

SITE=/tmp/site
mkdir -p "$SITE" /tmp/cache
tar xJf .gpu/llama_cpp-*.tar.xz -C "$SITE" || { log "no CUDA llama_cpp tarball in .gpu/"; exit 1; }
python3 -m pip install -q --no-index --no-deps --target "$SITE" .gpu/*.whl 2>&1 | tail -2
CUBLAS="$(find /opt /usr -name 'libcublas.so.13' 2>/dev/null | head -1)"
export LD_LIBRARY_PATH="$(dirname "${CUBLAS:-/nonexistent/x}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$SITE:$PWD" XDG_CACHE_HOME=/tmp/cache MATEPERF_RESULTS=/tmp/results
export MATEPERF_LLAMA_COMMON="$PWD/.gpu/libllama-common.so"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'offload', llama_cpp.llama_supports_gpu_offload())" 2>&1 | tee -a "$OUT/check.log"

SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ -f /tmp/model.gguf ] && echo "$SHA  /tmp/model.gguf" | sha256sum -c --quiet 2>/dev/null; then
  export MATEPERF_MODEL=/tmp/model.gguf
else
  export MATEPERF_MODEL=/tmp/gemma3-270m-shapes.gguf
  timeout 120 python3 -c "from mateperf.gpu.tinygguf import write_tiny_gguf, GEMMA3_270M_SHAPES as S; write_tiny_gguf('$MATEPERF_MODEL', S)" 2>&1 | tail -3
fi
log "model: $MATEPERF_MODEL"

timeout 230 python3 -m pytest -m gpu -q -rs -p no:cacheprovider \
  tests/test_gpu_device.py tests/test_gpu_monitor.py > "$OUT/pytest-gpu.txt" 2>&1
log "pytest -m gpu: rc $? ($(tail -1 "$OUT/pytest-gpu.txt"))"

timeout "$(left)" python3 benchmarks/gpu_device_run.py "$OUT/phase" \
  --steps sweep,fallback,default --layers 0,4,9,13,18,-1 > "$OUT/phase.log" 2>&1
log "gpu phase: rc $? (timeout 124 = cut off; finished steps are kept)"
cp -r /tmp/cache/mateperf/gpu "$OUT/calibration" 2>/dev/null
grep -h "within\|measured" "$OUT/phase/sweep/sweep.md" 2>/dev/null | head -20
log "done"
