#!/usr/bin/env bash
# The gpu phase's checks on a lent GPU machine, in ONE device call under 6 minutes (BUDGET_S,
# 330 s of work after the machine starts; every step has its own timeout inside it):
#   1. install the prebuilt CUDA llama-cpp-python and the carried wheels (../shared/gpu/README.md)
#      (~20 s); the model: the real default model if /tmp/model.gguf has its sha256, else one
#      generated with its architecture and shapes (Q8_0 throughout), noted in the log
#   2. the gpu phase at its defaults, saved as a real run directory under $OUT/results (run.json,
#      gpu.parquet, gpu.md, plots) with FINAL_RESULTS.md rendered from it: 4 trials of the run's
#      own n_gpu_layers (flash attention off) and of every profile that fits (performance,
#      balanced, low_memory with flash attention on; cpu_fallback with the GPU hidden); the
#      device overhead calibrated with flash attention off and on (four loads of a tiny model);
#      prints measured vs both predictions per configuration (target: within 64 MiB) (~200 s)
#   3. performance forced onto an emulated 1000 MiB card: every GPU step of the chain skipped by
#      prediction (reasons printed), the CPU loaded; a second run directory (~30 s)
#   4. pytest -m gpu, the quick device tests: alerts under a budget (critical, then ok, is
#      accepted), cpu_fallback hides the GPU, the device overhead stored with its four figures,
#      llama.cpp's projection vs the metadata per layer count (what time is left, at most 100 s)
# Printed: the calibration, both tables of measured vs predicted, the chain's rows, pytest's
# summary line. Everything lands under $OUT as it is produced.
#
# STEPS=tune (a second call) runs, after step 1, `mateperf tune` on the GPU instead: two CPUs
# (taskset, so the space stays small), n_batch 512, KV f16 and q8_0 with flash attention on,
# 2 race rounds and 2 confirmation trials each; its run directory under $OUT/results holds
# recommended.json with each pick's VRAM measured by NVML beside its prediction (~150 s).
#   run(command="STEPS=tune bash benchmarks/gpu_device_check.sh", carry=[".gpu"], timeout_s=360)
#
# Before: benchmarks/gpu_prepare.sh here (fills .gpu/: CUDA tarball, diskcache, gguf, PyYAML,
# tabulate wheels, libllama-common.so). Afterwards, here: `mateperf report <files>/results/<id>`.
# Call:  run(command="bash benchmarks/gpu_device_check.sh", carry=[".gpu"], timeout_s=360)
set -uo pipefail
: "${OUT:?OUT is set by the device machine}"
BUDGET_S="${BUDGET_S:-330}"
T0=$(date +%s)
log() { echo "[check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/check.log"; }
left() { local s=$(( BUDGET_S - ($(date +%s) - T0) )); echo $(( s > 5 ? s : 5 )); }

SITE=/tmp/site
mkdir -p "$SITE" /tmp/cache
tar xJf .gpu/llama_cpp-*.tar.xz -C "$SITE" || { log "no CUDA llama_cpp tarball in .gpu/"; exit 1; }
python3 -m pip install -q --no-index --no-deps --target "$SITE" .gpu/*.whl 2>&1 | tail -2
CUBLAS="$(find /opt /usr -name 'libcublas.so.13' 2>/dev/null | head -1)"
export LD_LIBRARY_PATH="$(dirname "${CUBLAS:-/nonexistent/x}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$SITE:$PWD" XDG_CACHE_HOME=/tmp/cache MATEPERF_RESULTS="$OUT/results"
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

if [ "${STEPS:-phase}" = tune ]; then
  timeout "$(left)" taskset -c 0,1 python3 -m mateperf --results "$OUT/results" tune \
    -p n_batch=512 -p kv_types=f16,q8_0 -p flash_attn=on -p max_rounds=2 -p min_reps=2 \
    -p confirm_reps=2 -p reply_tokens=16 > "$OUT/tune.log" 2>&1
  log "mateperf tune: rc $? (124 = cut off)"
  grep -v "^\[tune\] [0-9]" "$OUT/tune.log" | tail -25
  for f in "$OUT"/results/*-tune-*/recommended.json; do
    [ -f "$f" ] && python3 -c "import json,sys; r=json.load(open(sys.argv[1])); [print(n, e['settings'], {k: e['measured'][k] for k in ('vram_mb','vram_predicted_mb','vram_basis')}) for n, e in r['profiles'].items()]" "$f"
  done
  log "done"
  exit 0
fi

# steps 2 and 3 in one process: llama.cpp's dry runs of the same configurations are reused
PT=$(( $(left) - 60 )); PT=$(( PT > 30 ? PT : 30 ))  # keep a minute for pytest
timeout "$PT" python3 benchmarks/gpu_device_run.py "$OUT/results" \
  --steps default,fallback > "$OUT/phase.log" 2> "$OUT/phase.err"
log "gpu phase: rc $? (124 = cut off; finished run directories are kept)"
cat "$OUT/phase.log"
grep -h "device overhead\|selected profile\|FAILED" "$OUT/phase.err" | head -12
cp -r /tmp/cache/mateperf/gpu "$OUT/calibration" 2>/dev/null && cat "$OUT/calibration/overhead.json"

T=$(left); T=$(( T > 100 ? 100 : T ))
timeout "$T" python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu_device.py \
  -k "alerts or hides or stored or places" > "$OUT/pytest-gpu.txt" 2>&1
log "pytest -m gpu (${T} s): rc $? ($(tail -1 "$OUT/pytest-gpu.txt"))"
log "done"
