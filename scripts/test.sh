#!/usr/bin/env bash
# Set up (Debian packages, .venv with the test tools) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` or `-k stats`.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t pkgs < <(grep -v '^\s*#' scripts/test-apt-packages.txt | grep -v '^\s*$')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test: installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

scripts/setup.sh dev

echo "test: ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "test: pytest"
set +e
# Mono was installed above: a C# test that cannot find it fails instead of skipping.
MATEPERF_REQUIRE_MONO=1 .venv/bin/python -m pytest -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"

# The companion's developers run Python 3.10: the fast tests and a real phase run there too.
echo "test: Python 3.10"
scripts/test-py310.sh
