#!/usr/bin/env bash
# The companion's developers run Python 3.10 (3.10.9). Where a 3.10 interpreter exists, set up
# .venv-py310 with the same llama-cpp-python wheel (py3-none, shared through the wheel cache),
# run the fast tests and one short real phase run there. Where none exists, say so and stop.
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
# The C# peer's tests (marker mono) run the same Mono binary whatever the Python: left to 3.11.
.venv-py310/bin/python -m pytest -q -m "not slow and not mono" -p no:cacheprovider "$@"
echo "test-py310: fast tests in $((SECONDS - start)) s"

# One real phase run, typed as a user would, into a results root of its own.
results_root="$(mktemp -d)"
trap 'rm -rf "$results_root"' EXIT
start=$SECONDS
.venv-py310/bin/mateperf --results "$results_root" run llm -p trials=2
echo "test-py310: mateperf run llm -p trials=2 under $(.venv-py310/bin/python --version) in $((SECONDS - start)) s"
