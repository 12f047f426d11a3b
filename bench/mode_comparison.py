"""The fine-tuning mode comparison of a task with a selection rule: ``ft`` in every mode, each over its own
learning-rate grid (``forgetbench.modes.LR_SCALES``), the task's rule applied per mode, more seeds at the selected
setting. Run by hand (minutes per run on a CPU); every stage goes through ``forgetbench sweep``, so recorded runs are
skipped and the same command resumes. Full fine-tuning's records (the rule's reference) must be in RESULTS already:
``forgetbench sweep TASK --tradeoff --methods ft`` makes them.

    python bench/mode_comparison.py mini-noise --results runs --seeds 3 [--modes bitfit,lora] [--jobs 1]
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from forgetbench.modes import FULL, LR_SCALES, MODES, entry_label
from forgetbench.records import ResultStore
from forgetbench.selection import select
from forgetbench.tasks import load_task


def sweep(task: str, results: str, jobs: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "forgetbench.cli", "sweep", task, "--methods", "ft", "--results", results, "--jobs",
           str(jobs), *extra]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--results", default="runs")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of each mode's selected setting (default 3)")
    ap.add_argument("--modes", default=",".join(m for m in MODES if m != FULL))
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    task = load_task(args.task)
    modes = args.modes.split(",")
    first = task.seeds[0]
    for mode in modes:  # every mode's grid first, so that a stopped comparison has each mode's front
        grid = ",".join(f"{v:g}" for v in LR_SCALES[mode])
        sweep(args.task, args.results, args.jobs, "--set", f"train.mode={mode}", "--grid", f"ft.lr_scale={grid}",
              "--seeds", str(first))
    records = [r for r in ResultStore(args.results).load(task.name) if r.task.version == task.version]
    chosen = select(task, records)
    more = ",".join(str(s) for s in range(first, first + args.seeds) if s != first)
    for mode in modes:
        pick = chosen[entry_label("ft", mode)]
        print(f"{mode}: lr_scale {pick.params['lr_scale']:g}, validation {pick.val_acc:.2f}%"
              f"{'' if pick.matched else ' (short of the bar: the closest)'}", flush=True)
        if more:
            sweep(args.task, args.results, args.jobs, "--set", f"train.mode={mode}", "--grid",
                  f"ft.lr_scale={pick.params['lr_scale']:g}", "--seeds", more)
    return 0


if __name__ == "__main__":
    sys.exit(main())
