"""The fine-tuning mode comparison of a task with a selection rule: ``ft`` in every mode, each over its own
learning-rate grid (``forgetbench.modes.LR_SCALES``), the task's rule applied per mode, more seeds at the selected
setting, then the table (per mode: trainable parameters, peak training memory, target accuracy, ΔLP with its paired
bootstrap interval, whether it reached the bar). Run by hand (minutes per run on a CPU); every stage goes through
``forgetbench sweep``, so recorded runs are skipped and the same command resumes. Full fine-tuning's records (the
rule's reference) must be in RESULTS already: ``forgetbench sweep TASK --tradeoff --methods ft`` makes them.

    python bench/mode_comparison.py mini-noise --results runs --seeds 3 [--modes bitfit,lora] [--jobs 1] [--table]
"""
from __future__ import annotations

import argparse
import subprocess
import sys

import math

from forgetbench.models import get_model
from forgetbench.modes import FULL, LR_SCALES, MODES, entry_label
from forgetbench.records import ResultStore
from forgetbench.report.board import mean
from forgetbench.report.bootstrap import ImageDraws, differences, mean_delta_interval
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
    ap.add_argument("--table", action="store_true", help="print the table of what is recorded; run nothing")
    args = ap.parse_args()
    task = load_task(args.task)
    modes = args.modes.split(",")
    if args.table:
        return table(task, args.results, [FULL, *modes], args.seeds)
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
    return table(task, args.results, [FULL, *modes], args.seeds)


def table(task, results: str, modes: list[str], n_seeds: int) -> int:
    """Per mode, ``ft`` at its selected setting over its first ``n_seeds`` seeds: a Markdown table."""
    records = [r for r in ResultStore(results).load(task.name) if r.task.version == task.version]
    chosen = select(task, records)
    seeds = set(range(task.seeds[0], task.seeds[0] + n_seeds))
    print(f"| mode | trainable params | peak train memory (MB) | lr_scale | val acc | target acc | gain | ΔLP "
          f"| ΔLP 95% CI | at matched gain | seeds |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    rows = {}
    for mode in modes:
        pick = chosen[entry_label("ft", mode)]
        recs = sorted((r for r in records if r.method.name == "ft" and r.mode == mode and r.seed in seeds
                       and dict(r.method.params) == pick.params), key=lambda r: r.seed)
        if recs:
            rows[mode] = (pick, recs)
    runs = {m: [differences(r) for r in recs] for m, (_, recs) in rows.items()}
    images = ImageDraws({name: d.size for name, d in next(iter(runs.values()))[0].items()})
    for mode, (pick, recs) in rows.items():
        ci = mean_delta_interval(runs[mode], images)
        trainable = {r.training.get("trainable_params") for r in recs} - {None}
        memory = [r.training["peak_memory_mb"] for r in recs if "peak_memory_mb" in r.training]
        acc = [r.metrics.target.acc for r in recs]
        std = math.sqrt(sum((a - mean(acc)) ** 2 for a in acc) / (len(acc) - 1)) if len(acc) > 1 else 0.0
        if not trainable and mode == FULL:  # records older than the field: every encoder weight trains
            trainable = {sum(p.numel() for p in get_model(task.model).visual.parameters())}
        cells = [mode, ", ".join(f"{t:,}" for t in sorted(trainable)) or "(not recorded)",
                 f"{mean(memory):.0f}" if memory else "(not recorded)", f"{pick.params['lr_scale']:g}",
                 f"{pick.val_acc:.1f}", f"{mean(acc):.1f} ± {std:.1f}",
                 f"{mean([r.metrics.target.gain for r in recs]):+.1f}", f"{ci.mean:+.2f}",
                 f"[{ci.low:+.2f}, {ci.high:+.2f}]", "yes" if pick.matched else "no: cannot reach the gain",
                 str(len(recs))]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
