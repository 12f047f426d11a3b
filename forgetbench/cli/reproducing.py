"""``forgetbench reproduce``: run a paper entry's task set (or its mini analogue) and render its ledger."""
from __future__ import annotations

import sys
from pathlib import Path

from ..atomic import atomic_write
from ..errors import DataError, SpecError
from ..protocol import figure_protocol, protocol_for
from ..records import ResultStore
from ..reproduce.check import missing
from ..reproduce.costs import entry_hours
from ..reproduce.entries import ENTRIES, entry
from ..reproduce.ledger import ledger_rows, render_markdown
from ..run import requested_options, run_one
from ..tasks import load_task
from .running import _train_options


def _expected_time(e, tasks, records) -> str:
    if e.is_mini:
        seconds = sum(r.timings.total_s or 0 for r in records if r.task.name in e.tasks)
        return f"no GPU (CPU; recorded runs took {seconds / 60:.0f} CPU-min)" if seconds else "no GPU (CPU)"
    hours = entry_hours(tasks)
    return "unknown (no step-time estimate for its model)" if hours is None else f"~{hours:.1f} GPU-h (estimate)"


def cmd_list(args) -> int:
    records = ResultStore(args.results).load()
    print(f"reproduction entries (expected time for every task's default methods and seeds; runs recorded in "
          f"{args.results}/):")
    for e in ENTRIES:
        tasks = [load_task(t) for t in e.tasks]
        runs = sum(len(t.methods) * len(t.seeds) for t in tasks)
        ids = {r.run_id for r in records if r.task.name in e.tasks}
        kind = f"mini analogue of {e.analogue_of}" if e.is_mini else "paper"
        print(f"  {e.name:<24} {kind}; {len(tasks)} task(s), {runs} runs, {min(len(ids), runs)} recorded; "
              f"{_expected_time(e, tasks, records)}\n  {'':<24} {e.title}")
    return 0


def cmd_reproduce(args) -> int:
    if args.list:
        return cmd_list(args)
    if args.name is None:
        raise SpecError("give an entry to reproduce, e.g. `forgetbench reproduce mini-mtil`, or --list to see them")
    e = entry(args.name)
    tasks = [load_task(t) for t in e.tasks]
    absent = missing(tasks)  # before anything runs: every missing weight and dataset at once
    if absent:
        for line in absent:
            print(f"  missing {line}", file=sys.stderr)
        raise DataError(f"reproduce {e.name}: {len(absent)} item(s) missing (listed above); nothing was run")
    if args.dry_run:
        print(f"dry run of {e.name}: the weights and data of its {len(tasks)} task(s) are all here; nothing was run")
        return 0
    store = ResultStore(args.results)
    if not args.no_run:
        _run_all(args, tasks, store)
    records = store.load()
    rows = ledger_rows(e, records)
    text = render_markdown(e, rows, args.results)
    out = Path(args.out) if args.out else Path(args.results) / "ledger" / f"{e.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    print(text)
    if e.figure and any(r.task.name in e.tasks for r in records):
        figure = out.with_name(f"{e.name}-{e.figure}")  # beside the ledger
        paths = figure_protocol(e.figure).plot(e.figure, [r for r in records if r.task.name in e.tasks], figure)
        print("figure: " + ", ".join(str(p) for p in paths))
    print(f"ledger -> {out}")
    return 0


def _run_all(args, tasks, store) -> None:
    options = _train_options(args)
    for task in tasks:
        protocol_for(task).check_execution(requested_options(options, args.checkpoint_every, None))
    for task in tasks:
        protocol = protocol_for(task)
        for method in task.methods:
            for seed in task.seeds:
                record = run_one(task, method, seed, store, device=args.device, progress=not args.quiet,
                                 options=options, checkpoint_every=args.checkpoint_every)
                state = "already recorded, skipped" if record is None else protocol.summary_line(record)
                print(f"  {task.name} {method} seed {seed}: {state}")
