"""Does a fine-tune target have headroom? The bars of the mini world's targets, checked on run records.

    forgetbench run mini-noise --methods ft,lp --seeds 0,1,2 --results DIR
    python bench/headroom_check.py --results DIR [--tasks mini-noise,mini-brightness] [--method ft]

Per task: the pre-trained linear probe on the target (the `lp` run: the frozen encoder with the protocol's probe),
the fine-tuned method's target accuracy and its mean ΔLP over the held-out datasets, each as the mean over seeds with a
95% Student-t interval (t with n-1 degrees of freedom times the standard error; n = the number of seeds), and whether
it clears the bars: target >= linear probe + 15 points and mean ΔLP <= -3 points (on the means).
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
from scipy import stats
from tabulate import tabulate

from forgetbench.records import ResultStore

GAIN_BAR, FORGETTING_BAR = 15.0, -3.0


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (nan for a single value)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def rows_for(records: list[dict], method: str) -> list[list]:
    by_task: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        by_task.setdefault(r["task"]["name"], {}).setdefault(r["method"]["name"], []).append(r)
    rows = []
    for task, methods in sorted(by_task.items()):
        if "lp" not in methods or method not in methods:
            print(f"{task}: needs both lp and {method} records; skipped", file=sys.stderr)
            continue
        lp = mean_interval([r["metrics"]["target"]["acc"] for r in methods["lp"]])[0]  # deterministic: one value
        runs = sorted(methods[method], key=lambda r: r["seed"])
        acc, acc_ci = mean_interval([r["metrics"]["target"]["acc"] for r in runs])
        dlp, dlp_ci = mean_interval([r["metrics"]["summary"]["delta_lp_mean"] for r in runs])
        ok = acc >= lp + GAIN_BAR and dlp <= FORGETTING_BAR
        rows.append([task, runs[0]["task"]["spec"]["train"]["lr"], ",".join(str(r["seed"]) for r in runs),
                     f"{lp:.1f}", f"{acc:.1f} ± {acc_ci:.1f}", f"{acc - lp:+.1f}", f"{dlp:+.2f} ± {dlp_ci:.2f}",
                     "yes" if ok else "NO"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="folder of run records (forgetbench run --results)")
    ap.add_argument("--tasks", help="comma-separated task names (default: every task with lp and METHOD records)")
    ap.add_argument("--method", default="ft")
    args = ap.parse_args()
    records = [r.to_json() for r in ResultStore(args.results).load()]
    if args.tasks:
        wanted = set(args.tasks.split(","))
        records = [r for r in records if r["task"]["name"] in wanted]
    rows = rows_for(records, args.method)
    if not rows:
        raise SystemExit(f"headroom_check: error: no task in {args.results} has both lp and {args.method} records")
    print(tabulate(rows, headers=["task", "lr", "seeds", "LP pre-trained %", f"{args.method} target % (95% CI)",
                                  "gain", "mean ΔLP (95% CI)", f"bars (+{GAIN_BAR:g}, {FORGETTING_BAR:g})"],
                   tablefmt="github", disable_numparse=True))
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
