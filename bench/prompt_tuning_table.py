"""Per-dataset base / new / H of a prompt-tuning task's records, one row per (method, params), as Markdown.

    python bench/prompt_tuning_table.py mini-base2new [--results results]

The leaderboard shows the averages over datasets with intervals; this table shows where they come from: each
dataset's mean over seeds (± standard deviation over seeds), the pre-trained model's zero-shot scores with the
dataset's hand-crafted prompts and with the context's initial words. Reads records only; trains nothing.
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from forgetbench.records import ResultStore
from forgetbench.report.board import format_params


def cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    records = ResultStore(args.results).load(args.task)
    if not records:
        print(f"no records of {args.task} in {args.results}/")
        return 1
    version = max(r.task.version for r in records)
    records = [r for r in records if r.task.version == version]
    datasets = list(records[0].metrics.datasets)
    rows: dict[str, list] = defaultdict(list)
    for r in records:
        params = format_params(dict(r.method.params), r.method.name)
        rows[f"{r.method.name} {params}".strip()].append(r)
    print(f"{args.task} v{version}: base / new / H per dataset, mean ± sd over seeds\n")
    print("| method | seeds | " + " | ".join(f"{d} base / new / H" for d in datasets) + " |")
    print("|---|---|" + "---|" * len(datasets))
    first = records[0].metrics.datasets
    for label, key in (("zero-shot (templates)", "zero_shot"), ("zero-shot (initial words)", "init_prompt")):
        scores = [getattr(first[d], key) for d in datasets]
        if all(s is not None for s in scores):
            print(f"| {label} | – | " + " | ".join(f"{s.base:.1f} / {s.new:.1f} / {s.h:.1f}" for s in scores) + " |")
    for label, recs in sorted(rows.items()):
        parts = [" / ".join(cell([getattr(r.metrics.datasets[d], k) for r in recs]) for k in ("base", "new", "h"))
                 for d in datasets]
        print(f"| {label} | {len({r.seed for r in recs})} | " + " | ".join(parts) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
