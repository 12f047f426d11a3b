"""Which pairwise claims hold at matched gain: paired bootstrap intervals of ΔLP differences between selected settings.

    forgetbench sweep mini-noise --tradeoff --results DIR
    python bench/pairwise_claims.py mini-noise --results DIR [--claims fda>ldifs,proxy-fda>fda,...]

Each method at the setting the task's selection rule picks (validation only); a claim "a>b" holds when the 95%
interval of mean ΔLP(a) − ΔLP(b), resampling the seeds both have and the test images (the same images for both),
lies above 0. The default claims are Proxy-FDA's (FDA > LDIFS, Proxy-FDA > FDA, LDIFS > L2-SP, L2-SP > LP-FT > FT).
"""
from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from forgetbench.records import ResultStore
from forgetbench.report.board import fmt
from forgetbench.report.bootstrap import ImageDraws, differences, paired_difference
from forgetbench.selection import select
from forgetbench.tasks import load_task

PROXY_FDA_CLAIMS = "fda>ldifs,proxy-fda>fda,ldifs>l2sp,l2sp>lp-ft,lp-ft>ft"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("--results", required=True)
    ap.add_argument("--claims", default=PROXY_FDA_CLAIMS, help=f"comma-separated a>b (default {PROXY_FDA_CLAIMS})")
    args = ap.parse_args()
    task = load_task(args.task)
    records = [r for r in ResultStore(args.results).load(task.name) if r.task.version == task.version]
    chosen = select(task, records)
    runs = {}
    for method, pick in chosen.items():
        key = json.dumps(pick.params, sort_keys=True)
        runs[method] = {r.seed: differences(r) for r in records
                        if r.method.name == method and json.dumps(dict(r.method.params), sort_keys=True) == key}
    images = ImageDraws({name: d.size for name, d in next(iter(next(iter(runs.values())).values())).items()})
    rows = []
    for claim in args.claims.split(","):
        a, b = claim.split(">")
        if a not in runs or b not in runs:
            rows.append([claim, "", "", "not run"])
            continue
        ci = paired_difference(runs[a], runs[b], images)
        seeds = len(set(runs[a]) & set(runs[b]))
        verdict = "holds" if ci.low > 0 else "reversed" if ci.high < 0 else "not resolved (interval contains 0)"
        rows.append([claim, seeds, f"{fmt(ci.mean, True)} [{fmt(ci.low, True)}, {fmt(ci.high, True)}]", verdict])
    print(tabulate(rows, headers=["claim", "paired seeds", "ΔLP(a) − ΔLP(b), 95% CI", "verdict"], tablefmt="github"))


if __name__ == "__main__":
    main()
