#!/usr/bin/env bash
# Time the README's main command from a clean clone, with an empty cache (nothing precomputed):
#   bash bench/time_default_run.sh [PYTHON [EXTRA forgetbench run ARGS...]]
# PYTHON defaults to the active interpreter; it must have forgetbench's dependencies installed. Extra arguments go
# to `forgetbench run` (e.g. --results "$PWD/results" to keep the records).
set -euo pipefail
PY="${1:-python}"
shift || true
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$src" "$work/forgetbench"
cd "$work/forgetbench"
export FORGETBENCH_CACHE="$work/cache"
load="$(cut -d' ' -f1-3 /proc/loadavg)"  # other work on the machine slows every step: say how much there was
start=$(date +%s)
PYTHONPATH="$work/forgetbench" "$PY" -m forgetbench.cli run --seeds 0 --quiet "$@"  # the default task
echo "main command: $(( $(date +%s) - start ))s wall on $(nproc) cores (load average before: $load; after: $(cut -d" " -f1-3 /proc/loadavg))"
