#!/usr/bin/env bash
# Time the README's main command from a clean clone, with an empty cache (nothing precomputed):
#   bash bench/time_default_run.sh [PYTHON [EXTRA forgetbench run ARGS...]]
# PYTHON defaults to the active interpreter; it must have forgetbench's dependencies installed. The clone is installed
# into a throw-away virtual environment that borrows PYTHON's packages (so torch is not installed again; building
# the package fetches its build backend from the package index). Extra arguments go to `forgetbench run`
# (e.g. --results "$PWD/results" to keep the records).
set -euo pipefail
PY="${1:-python}"
shift || true
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$src" "$work/forgetbench"
"$PY" -m venv --without-pip "$work/venv"
"$PY" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("-packages")))' \
  > "$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/deps.pth"
"$PY" -m pip --python "$work/venv/bin/python" install -q --no-deps "$work/forgetbench"
cd "$work/forgetbench"
export FORGETBENCH_CACHE="$work/cache"
start=$(date +%s)
"$work/venv/bin/forgetbench" run mini-shapes --seeds 0 --quiet "$@"
echo "main command: $(( $(date +%s) - start ))s wall on $(nproc) cores"
