#!/usr/bin/env bash
# The companion's developers run Python 3.10 (3.10.9). Where a 3.10 interpreter exists, set up
# .venv-py310 with the same llama-cpp-python wheel (py3-none, shared through the wheel cache),
# run the fast tests that can differ under 3.10 and one short real phase run there. Where none
# exists, say so and stop.
set -euo pipefail
cd "$(dirname "$0")/.."

py310=""
# A pyenv shim answers to python3.10 even where it cannot run it: ask each candidate to run.
for candidate in python3.10 "$HOME"/.pyenv/versions/3.10*/bin/python3.10; do
  if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; then
    py310="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$py310" ]; then
  echo "test-py310: no Python 3.10 interpreter on this machine; the 3.10 run is skipped"
  exit 0
fi
echo "test-py310: $("$py310" --version) at $py310"

start=$SECONDS
MATEPERF_PYTHON="$py310" MATEPERF_VENV=.venv-py310 scripts/setup.sh dev
echo "test-py310: set up in $((SECONDS - start)) s"

start=$SECONDS
# The fast tests whose subject can behave differently under 3.10: the interpreter's own library
# (argparse's wording, dataclasses, ctypes, pathlib, importlib.metadata) and the dependency
# versions pip resolves for 3.10 (numpy, scipy, pandas, pyarrow, papermill). The rest of the
# suite (sockets and threads of the bridge, the phases' logic) runs under the main interpreter
# in scripts/test.sh; here the real phase run below exercises the measuring path end to end.
# The C# peer's tests (marker mono) run the same Mono binary whatever the Python: left to 3.11.
py310_tests=(
  tests/test_import_graph.py      # every module imported under 3.10
  tests/test_cli_help.py          # argparse help and errors
  tests/test_bad_input.py         # one-line refusals
  tests/test_phase_params.py      # the parameter dataclasses and notebook cells
  tests/test_phase_declaration.py
  tests/test_notebooks.py         # papermill and nbformat reading every notebook
  tests/test_results_store.py     # json, atomic replace, parquet through pandas/pyarrow
  tests/test_upgrade.py
  tests/test_windows_files.py
  tests/test_windows_simulated.py # ctypes and os branches per OS
  tests/test_stats.py             # numpy/scipy statistics as resolved for 3.10
  tests/test_compare.py
  tests/test_memory_sampler.py    # ctypes mallinfo2, the sampler threads
  tests/test_sampler.py
  tests/test_llama_features.py    # importlib.metadata and the llama_cpp bindings
  tests/test_gpu_estimate.py      # GGUF headers through struct and numpy
  tests/test_runner.py
  tests/test_recommend.py
)
.venv-py310/bin/python -m pytest -q -m "not slow and not mono" -p no:cacheprovider \
  "${py310_tests[@]}" "$@"
echo "test-py310: fast tests in $((SECONDS - start)) s"

# One real phase run, typed as a user would, into a results root of its own.
results_root="$(mktemp -d)"
trap 'rm -rf "$results_root"' EXIT
start=$SECONDS
# Small sizes: the path under 3.10 is what is checked (the kernel, the model, every scenario
# and the stored run), not the figures, which the full run under the main interpreter gives.
small=(-p trials=2 -p max_tokens=16 -p pp_tokens=128 -p tg_tokens=32 -p membw_mb=64)
.venv-py310/bin/mateperf --results "$results_root" run llm "${small[@]}"
echo "test-py310: mateperf run llm ${small[*]} under $(.venv-py310/bin/python --version) in $((SECONDS - start)) s"
