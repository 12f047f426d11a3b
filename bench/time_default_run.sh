#!/usr/bin/env bash
# Time the README's main command from a clean clone, with an empty cache (nothing precomputed):
#   bash bench/time_default_run.sh [PYTHON [EXTRA forgetbench run ARGS...]]
#   OMP_NUM_THREADS=1 bash bench/time_default_run.sh   # on a busy machine: one thread, and read the CPU time
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
load="$(cut -d' ' -f1-3 /proc/loadavg)"  # other work on the machine slows every step: say how much there was
start=$(date +%s)
"$work/venv/bin/forgetbench" run --seeds 0 --quiet "$@"  # the default task
# (getconf, not nproc: nproc reports OMP_NUM_THREADS when it is set)
echo "main command: $(( $(date +%s) - start ))s wall on $(getconf _NPROCESSORS_ONLN) cores (load average before: $load;" \
     "after: $(cut -d" " -f1-3 /proc/loadavg))"
# CPU time does not grow with other work the way wall time does: with OMP_NUM_THREADS=1 it bounds the wall time
# of the same run on an idle machine
times > "$work/times"  # not in a pipe or $(...): a subshell would report its own (empty) children
echo "CPU time, user and system: $(tail -1 "$work/times")"
