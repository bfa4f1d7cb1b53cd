# Sourced, not run: sets CMAKE_ARGS for a llama-cpp-python source build that runs on this CPU,
# and defines llama_wheel_dir VERSION (where the built wheel of that version and these flags
# is cached). Shared by scripts/setup.sh and benchmarks/llama_cpp_compat.sh, so every build of
# every llama-cpp-python version gets the same flags.
#
# Why not a native build: llama.cpp's default enables every ISA the CPU advertises, and on hosts
# that advertise AMX without the kernel enabling it the AMX kernels die with SIGILL. So
# GGML_NATIVE=OFF and the SIMD sets listed explicitly, AMX off.
#
#   CMAKE_ARGS="..."   set before sourcing: kept as it is (your own build)
#   MATEPERF_CUDA=1    adds -DGGML_CUDA=on to the computed flags (NVIDIA build)

if [ -z "${CMAKE_ARGS:-}" ]; then
  _mateperf_flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
  _mateperf_has() { [[ " $_mateperf_flags " == *" $1 "* ]]; }
  _mateperf_args="-DGGML_NATIVE=OFF"
  for _mateperf_isa in avx avx2 fma f16c bmi2; do
    _mateperf_has "$_mateperf_isa" && _mateperf_args+=" -DGGML_${_mateperf_isa^^}=ON"
  done
  if _mateperf_has avx512f; then
    _mateperf_args+=" -DGGML_AVX512=ON"
    _mateperf_has avx512vbmi && _mateperf_args+=" -DGGML_AVX512_VBMI=ON"
    _mateperf_has avx512_vnni && _mateperf_args+=" -DGGML_AVX512_VNNI=ON"
    _mateperf_has avx512_bf16 && _mateperf_args+=" -DGGML_AVX512_BF16=ON"
  fi
  # AMX stays off on purpose: see the comment at the top.
  _mateperf_args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  if [ "${MATEPERF_CUDA:-0}" = "1" ]; then
    _mateperf_args+=" -DGGML_CUDA=on"
  fi
  export CMAKE_ARGS="$_mateperf_args"
  unset -f _mateperf_has
  unset _mateperf_flags _mateperf_args _mateperf_isa
fi

# The cache directory of a wheel: a different version or different flags never share one.
llama_wheel_dir() {
  local key
  key="$(printf '%s|%s|%s' "$1" "$CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-16)"
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/mateperf/wheels/$key"
}

# llama_wheel PYTHON VERSION: build llama-cpp-python VERSION from source with CMAKE_ARGS into
# its cache directory unless a wheel is there already; prints the wheel's path. The flags are
# stored beside the wheel, for the host fingerprint.
llama_wheel() {
  local py="$1" version="$2" dir
  dir="$(llama_wheel_dir "$version")"
  if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $version from source (5-10 minutes on 2 cores)" >&2
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$py" -m pip wheel -q --no-deps \
      --no-binary llama-cpp-python --no-cache-dir -w "$dir.tmp" \
      "llama-cpp-python==$version" >&2 || { rm -rf "$dir.tmp"; return 1; }
    printf '%s\n' "$CMAKE_ARGS" > "$dir.tmp/CMAKE_ARGS"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  ls "$dir"/llama_cpp_python-*.whl | head -n1
}
