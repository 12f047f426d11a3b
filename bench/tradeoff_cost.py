"""What a trade-off sweep costs: the measured runs of a results folder, and the projection of the full sweep.

    forgetbench sweep mini-noise --tradeoff --methods ft,l2sp,wise-ft,lp --grid ft.lr_scale=1,0.1 ... --results DIR
    python bench/tradeoff_cost.py mini-noise --results DIR [--methods ft,l2sp,...]

From the records' timings: per method, the mean seconds of one fine-tune (setup + training) and of one evaluation
(records measured from one shared fine-tune, WiSE-FT's alphas, count their fine-tune once). The projection of
`forgetbench sweep TASK --tradeoff` over every method (default: every method the fine-tune protocol can run) is
(fine-tunes x seconds per fine-tune + evaluations x seconds per evaluation), with the mean over measured methods
standing in for a method that was not measured. Timings of a shared machine are noisy: quote them as measured.
"""
from __future__ import annotations

import argparse
import math
from collections import defaultdict

from tabulate import tabulate

from forgetbench.methods import METHODS, get_method
from forgetbench.records import ResultStore
from forgetbench.selection import selected_seeds, sweep_seeds
from forgetbench.tasks import load_task

ABSENT_ONLY = ("calibrate",)  # methods of the absent-class protocol only


def measured(records: list) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per method: seconds of each fine-tune, and of each evaluation."""
    train, evaluate = defaultdict(list), defaultdict(list)
    shared_seen = set()
    for r in records:
        t = r.timings
        evaluate[r.method.name].append(t.evaluate_s)
        shared = (r.training or {}).get("post_hoc")
        key = (r.method.name, r.seed, t.setup_s, t.finetune_s)
        if shared and key in shared_seen:
            continue
        shared_seen.add(key)
        train[r.method.name].append((t.setup_s or 0.0) + t.finetune_s)
    return train, evaluate


def mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def projection(task, methods: list[str]) -> list[tuple[str, int, int]]:
    """(method, fine-tunes, evaluations) of the full trade-off sweep: grid x sweep seeds, then the selected
    setting over the rest of the selection's seeds."""
    grid_seeds = len(sweep_seeds(task))
    extra = len(selected_seeds(task)) - grid_seeds if task.selection is not None else 0
    out = []
    for name in methods:
        s = get_method(name).strength
        values = len(s.grid) if s is not None else 1
        finetunes = (1 if s is not None and s.post_hoc else values) * grid_seeds + extra
        out.append((name, finetunes, values * grid_seeds + extra))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--results", required=True)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every fine-tune method)")
    args = ap.parse_args()
    task = load_task(args.task)
    records = [r for r in ResultStore(args.results).load(task.name) if r.task.version == task.version]
    train, evaluate = measured(records)
    rows = [[m, len(evaluate[m]), len(train[m]), f"{mean(train[m]):.0f}", f"{mean(evaluate[m]):.0f}"]
            for m in sorted(evaluate)]
    print(f"measured: {len(records)} records of {task.name} v{task.version} in {args.results}/")
    print(tabulate(rows, headers=["method", "records", "fine-tunes", "s / fine-tune", "s / evaluation"],
                   tablefmt="github"))
    trained = [x for m, xs in train.items() if get_method(m).trains_encoder for x in xs]
    evals = [x for xs in evaluate.values() for x in xs]
    fallback_train, fallback_eval = mean(trained), mean(evals)
    methods = args.methods.split(",") if args.methods else [m for m in METHODS.names() if m not in ABSENT_ONLY]
    total, rows = 0.0, []
    for name, finetunes, evaluations in projection(task, methods):
        per_train = mean(train[name]) if train.get(name) else fallback_train
        if not get_method(name).trains_encoder:
            per_train = 0.0
        per_eval = mean(evaluate[name]) if evaluate.get(name) else fallback_eval
        seconds = finetunes * per_train + evaluations * per_eval
        total += seconds
        rows.append([name, finetunes, evaluations, f"{seconds / 3600:.2f}",
                     "measured" if name in evaluate else "mean of the measured"])
    print(f"\nprojection of `forgetbench sweep {task.name} --tradeoff` ({len(methods)} methods):")
    print(tabulate(rows, headers=["method", "fine-tunes", "evaluations", "hours", "seconds from"], tablefmt="github"))
    runs = sum(r[2] for r in rows)
    print(f"total: {runs} records, {sum(r[1] for r in rows)} fine-tunes, {total / 3600:.1f} hours of one run after "
          f"the other on this machine")


if __name__ == "__main__":
    main()
