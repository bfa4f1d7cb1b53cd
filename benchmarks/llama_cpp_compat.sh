#!/usr/bin/env bash
# mateperf in the companion's own environment: an older llama-cpp-python, already installed.
#
#   benchmarks/llama_cpp_compat.sh [VERSION]      (default 0.3.16, the companion's version)
#
# Builds llama-cpp-python VERSION from source with the CPU-safe flags of scripts/setup.sh
# (shared: scripts/llama_cmake_args.sh; the wheel is cached in ~/.cache/mateperf/wheels/<key>,
# so a rerun does not build again) into .venv-llama-VERSION, made from Python 3.10 where there
# is one (the companion runs 3.10.9); then `pip install -e .` there, as a developer would into
# their environment, and checks that the build was kept (same version, same libllama bytes);
# then `mateperf info`, `mateperf run llm -p trials=2` and a short `mateperf run gpu`, each
# with its exit code and wall time, and every "unavailable with this build" line they said.
#
#   MATEPERF_PYTHON=python3.11   the interpreter the venv is made from
#   MATEPERF_CUDA=1 / CMAKE_ARGS as for scripts/setup.sh
set -uo pipefail
cd "$(dirname "$0")/.."

VERSION="${1:-0.3.16}"
VENV=".venv-llama-$VERSION"
# shellcheck source=../scripts/llama_cmake_args.sh
source scripts/llama_cmake_args.sh

py="${MATEPERF_PYTHON:-}"
if [ -z "$py" ]; then
  # a pyenv shim is on PATH even where its version is not selected: ask each one to run
  for candidate in "$HOME"/.pyenv/versions/3.10*/bin/python3.10 python3.10 python3; do
    if "$candidate" -c "" >/dev/null 2>&1; then py="$(command -v "$candidate")"; break; fi
  done
fi
say() { echo "compat: $*"; }
summary=()
note() { summary+=("$*"); say "$*"; }

say "llama-cpp-python $VERSION, $("$py" --version 2>&1) ($py), CMAKE_ARGS=$CMAKE_ARGS"
[ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV" || { say "cannot make $VENV"; exit 1; }
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip wheel

start=$SECONDS
wheel="$(llama_wheel "$PY" "$VERSION")" || { say "build of $VERSION failed"; exit 1; }
note "wheel $(basename "$wheel"): $((SECONDS - start)) s (0-5 s means it came from the cache)"
"$PY" -m pip install -q --force-reinstall --no-deps "$wheel"
"$PY" -m pip install -q "$wheel"  # its own dependencies (typing-extensions, numpy, jinja2, ...)
cp "$(dirname "$wheel")/CMAKE_ARGS" "$VENV/mateperf-llama-cmake-args.txt"

# The companion's environment has its llama-cpp-python before mateperf arrives: a plain
# `pip install -e .` must keep it (pyproject asks for >=MINIMUM, so pip has nothing to do).
fingerprint() {
  "$PY" - <<'EOF'
import hashlib, importlib.metadata as m, importlib.util, pathlib
package = pathlib.Path(importlib.util.find_spec("llama_cpp").origin).parent
lib = next(package.joinpath("lib").glob("libllama.*"))
print(m.version("llama_cpp_python"), hashlib.sha256(lib.read_bytes()).hexdigest()[:16])
EOF
}
before="$(fingerprint)"
start=$SECONDS
"$PY" -m pip install -e . 2>&1 | grep -v "^WARNING: Location\|^  WARNING: Location" \
  | grep -E "^Requirement already satisfied: llama-cpp-python|llama.cpp.python-|^ERROR" || true
after="$(fingerprint)"
if [ "$before" = "$after" ]; then
  note "pip install -e . kept llama-cpp-python ($after: version, libllama sha256) in $((SECONDS - start)) s"
else
  note "pip install -e . REPLACED llama-cpp-python: before $before, after $after"
fi

echo
say "mateperf info (llama-cpp-python lines):"
"$VENV/bin/mateperf" info | grep -iE "llama|unavailable"
echo

root="${MATEPERF_COMPAT_RESULTS:-$(mktemp -d /tmp/mateperf-compat-XXXX)}"
run() {  # run NAME ARGS...: a phase run with its exit code, wall time and unavailable lines
  local name="$1"; shift
  local log="$root/$name.log" t0=$SECONDS rc
  "$VENV/bin/mateperf" --results "$root" "$@" >"$log" 2>&1
  rc=$?
  note "mateperf $*: exit $rc in $((SECONDS - t0)) s"
  tail -n 3 "$log" | sed 's/^/    /'
  local dir
  dir="$(grep -oE "$root/[^ ]+" "$log" | grep -v '\.log$' | tail -n1)"
  if [ -n "$dir" ] && [ -f "$dir/run.json" ]; then
    "$PY" - "$dir" <<'EOF'
import json, pathlib, sys
import pandas as pd
run = pathlib.Path(sys.argv[1])
info = json.loads((run / "run.json").read_text(encoding="utf-8"))
fp = info.get("fingerprint", {}).get("llama_cpp", {})
print(f"    run.json: status {info.get('status')}, llama-cpp-python {fp.get('version')} "
      f"({fp.get('build')}), supported: {fp.get('supported')}")
for name, line in fp.get("unavailable", {}).items():
    print(f"    run.json unavailable [{name}]: {line}")
for table in run.glob("*.parquet"):
    df = pd.read_parquet(table)
    counts = df["scenario"].value_counts().to_dict() if "scenario" in df else {}
    print(f"    {table.name}: {len(df)} rows, scenarios {counts}")
    for column in ("projection_status", "proj_status"):
        if column in df:
            for value in sorted(set(df[column].dropna().astype(str))):
                print(f"    {table.name} {column}: {value}")
EOF
  fi
  grep -h "unavailable" "$log" | sort -u | sed 's/^/    said: /'
}

run llm run llm -p trials=2
run gpu run gpu -p trials=1 -p n_threads=2 -p max_tokens=8 -p pp_tokens=32 -p tg_tokens=8 -p n_ctx=512

echo
say "summary (llama-cpp-python $VERSION, results under $root):"
printf '  %s\n' "${summary[@]}"
