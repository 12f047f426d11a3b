"""``forgetbench run`` and ``forgetbench sweep``: the runs of a task, here or on a cluster, whatever its protocol."""
from __future__ import annotations

import builtins
import importlib
import os
import time
from pathlib import Path

from ..data import DATASETS
from ..distributed import shutdown
from ..dryrun import dry_run
from ..errors import ForgetbenchError, SpecError
from ..launchers import LocalLauncher, RunJob, SlurmLauncher
from ..methods import METHODS, get_method
from ..models import MODELS
from ..progress import set_quiet
from ..protocol import protocol_for
from ..modes import entry_label, mode_of
from ..modes import identity as mode_identity
from ..records import ResultStore, run_id
from ..report.leaderboard import render_summary
from ..run import check_runnable, requested_options, run_one, weights_path
from ..methods import get_method
from ..report.board import format_params
from ..selection import select, selected_seeds, sweep_seeds
from ..sweep import expand, parse_grid, plan, shared_finetunes, tradeoff_grid
from ..tasks import check_names, load_task
from ..tasks.variants import is_axis, parse_sets, variants, with_settings
from ..train import TrainOptions


def cmd_run(args) -> int:
    task = with_settings(load_task(args.task), parse_sets(args.sets))
    methods = args.methods or list(task.methods)
    classes = load_methods(task, methods)  # every method and its params checked before the first fine-tune
    set_quiet(args.quiet)
    if args.dry_run:
        dry_run(task, methods, device=args.device or "cpu", batch=args.dry_run_batch, allow_missing=args.allow_missing)
        return 0
    seeds = args.seeds if args.seeds is not None else list(task.seeds)
    store = ResultStore(args.results)
    options = _train_options(args)
    protocol = protocol_for(task)
    weights_dir = args.weights_dir if args.save_weights else None
    protocol.check_execution(requested_options(options, args.checkpoint_every, weights_dir))  # before any work
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    print = builtins.print if main_process else (lambda *a, **k: None)
    print(f"task {task.name} v{task.version}: {protocol.describe(task)}; held out: "
          f"{', '.join(task.evaluate.datasets) or 'none'}; methods {', '.join(c.name for c in classes)}; "
          f"seeds {seeds}; "
          f"results -> {args.results}/")
    start = time.time()
    ours = []  # this command's records (new or already stored): its own summary table
    for method, cls in zip(methods, classes):
        for seed in seeds:
            t = time.time()
            record = run_one(task, method, seed, store, device=args.device, force=args.force,
                             progress=not args.quiet, options=options, checkpoint_every=args.checkpoint_every,
                             weights_dir=weights_dir)
            if record is None:
                print(f"  {cls.name:>10} seed {seed}: already recorded, skipped (use --force to rerun)")
                ours.append(stored_record(store, task, cls, seed))
                continue
            ours.append(record)
            print(f"  {cls.name:>10} seed {seed}: {protocol.summary_line(record)}  ({time.time() - t:.0f}s)")
            if weights_dir is not None:
                saved = weights_path(weights_dir, task.name, record.method.name, seed, record.run_id)
                print(f"  {'':>10} weights -> {saved}")
    print(f"done in {time.time() - start:.0f}s\n")
    print(render_summary([r for r in ours if r is not None]))
    print(f"\n(this command's runs only; the leaderboard of {args.results}/: forgetbench leaderboard --results "
          f"{args.results})")
    if not main_process:
        shutdown()
    return 0


def load_methods(task, methods: list[str]) -> list:
    """Every method named (registered names and ``.py`` files), and the task's hyper-parameters of each, loaded and
    checked before any work: a bad method file fails here, in one line, before anything is fine-tuned or written.
    Method files load first, so that the task's ``method_params`` may name the methods they register."""
    classes = [get_method(m) for m in methods]
    check_names(task, DATASETS, MODELS, METHODS)  # with them, the task's method_params of every method
    for cls in classes:
        check_runnable(task, cls)
    return classes


def stored_record(store: ResultStore, task, cls, seed: int):
    """The stored record of (task, method with the task's params, seed), or None."""
    rid = run_id(task.name, task.version, cls.name, cls.check_params(task.params_for(cls.name)), seed,
                 mode_identity(task.train))
    return next((r for r in store.load(task.name) if r.run_id == rid), None)


def _train_options(args):
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise SpecError(f"--checkpoint-every must be >= 0 (0: no checkpoints), got {args.checkpoint_every}")
    return TrainOptions(micro_batch=args.micro_batch, channels_last=args.channels_last, compile=args.compile,
                        workers=args.workers)


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise SpecError(f"--import {module}: cannot import it ({e}); it must be importable in every job too") from None


def cmd_sweep(args) -> int:
    for module in args.imports:
        _import(module)
    base = with_settings(load_task(args.task), parse_sets(args.sets))
    methods = args.methods or list(base.methods)
    grid = parse_grid(args.grid)
    axes = {k: v for k, v in grid.items() if is_axis(k)}  # train.mode=...: one task variant per mode
    grid = {k: v for k, v in grid.items() if k not in axes}
    tasks = variants(base, axes)
    for task in tasks:  # every method and mode pair checked before the first run of any
        load_methods(task, methods)
    for task in tasks:
        mode = f" (train.mode {mode_of(task.train)})" if len(tasks) > 1 or mode_of(task.train) != "full" else ""
        if args.tradeoff:
            _tradeoff(args, task, methods, grid, mode)
            continue
        seeds = args.seeds if args.seeds is not None else list(task.seeds)
        runs = expand(task, methods, seeds, grid)
        todo, done = plan(task, runs, ResultStore(args.results))
        print(f"sweep {task.name} v{task.version}{mode}: {len(runs)} runs ({len(methods)} methods, {len(seeds)} "
              f"seeds{', grid ' + ' '.join(args.grid) if args.grid else ''}); {len(done)} already recorded in "
              f"{args.results}/, launching {len(todo)} ({args.launcher})")
        _launch(args, task, todo)
    return 0


def _tradeoff(args, task, methods: list[str], extra_grid: dict, mode_note: str = "") -> int:
    """Every method over its strength grid (the sweep's seeds); then, for a task with a selection rule and once the
    grid is recorded, each method's selected setting over the rule's seeds. Recorded runs are skipped at both stages,
    so the same command resumes it, here or on other machines."""
    store = ResultStore(args.results)
    seeds = args.seeds if args.seeds is not None else list(sweep_seeds(task))
    # --grid METHOD.KEY=... replaces a default grid; a mode has its own learning-rate grid (forgetbench.modes)
    grid = {**tradeoff_grid(methods, mode_of(task.train)), **extra_grid}
    runs = expand(task, methods, seeds, grid)
    todo, done = plan(task, runs, store)
    print(f"trade-off sweep {task.name} v{task.version}{mode_note}: {len(runs)} runs ({len(methods)} methods over "
          f"their strength grids, seeds {', '.join(map(str, seeds))}); {len(done)} already recorded in "
          f"{args.results}/, launching {len(todo)} ({args.launcher})")
    _launch(args, task, todo)
    if task.selection is None:
        print(f"task {task.name!r} has no selection section: no setting is selected")
        return 0
    todo, _ = plan(task, runs, store)
    if todo:
        print(f"{len(todo)} grid runs are not recorded yet: rerun this command once they are, to select each "
              f"method's setting and run it over {task.selection.seeds} seeds")
        return 0
    records = [r for r in store.load(task.name) if r.task.version == task.version]
    chosen = select(task, records)
    names = {get_method(m).name for m in methods}
    selected = []
    for method in methods:
        name = get_method(method).name
        pick = chosen.get(entry_label(name, mode_of(task.train)))  # the method in this task's mode
        if pick is None:
            continue
        print(f"  selected {pick.method}: {format_params(pick.params, name) or 'defaults'} (validation "
              f"{pick.val_acc:.2f}%{'' if pick.matched else ', short of the bar: the closest setting'})")
        selected += expand(task, [method], selected_seeds(task), {f"{name}.{k}": (v,)
                                                                  for k, v in pick.params.items()})
    todo, done = plan(task, selected, store)
    print(f"selected settings x {task.selection.seeds} seeds ({len(names)} methods): {len(selected)} runs, "
          f"{len(done)} already recorded, launching {len(todo)}")
    _launch(args, task, todo)
    return 0


def _launch(args, task, todo) -> None:
    """Hand ``todo`` to the sweep's launcher; runs that can share a fine-tune (``shared_finetunes``) go as one job."""
    if not todo:
        return
    options = vars(_train_options(args))
    if args.launcher == "slurm":
        folder = args.slurm_folder
        if folder is None:  # job logs and pickles are scratch, even inside a committed results folder
            logs = Path(args.results) / "slurm"
            logs.mkdir(parents=True, exist_ok=True)
            (logs / ".gitignore").write_text("*\n")
            folder = str(logs.resolve() / "%j")
        launcher = SlurmLauncher(folder=folder, cluster=args.slurm_cluster, partition=args.partition,
                                 time_min=args.time, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                                 mem_gb=args.mem_gb, parallel=args.parallel, max_requeues=args.max_requeues,
                                 account=args.account, wait=args.wait, name=f"forgetbench-{task.name}")
        resumable = "checkpoint_every" in protocol_for(task).execution_options
        every = (100 if resumable else 0) if args.checkpoint_every is None else args.checkpoint_every  # resumes
    else:
        launcher, every = LocalLauncher(args.jobs), args.checkpoint_every or 0
    results = str(Path(args.results).resolve())  # jobs may start in another directory
    jobs = [RunJob(task=task.to_dict(), method=group[0].method, params=group[0].params, seed=group[0].seed,
                   results=results, label=" + ".join(r.label for r in group), device=args.device, options=options,
                   checkpoint_every=every, imports=tuple(args.imports), variants=tuple(r.params for r in group[1:]))
            for group in shared_finetunes(todo)]
    outcomes = launcher.launch(jobs, report=lambda o: print(f"  {o.label}: {o.status}"
                                                             + (f" ({o.detail})" if o.detail else "")))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise ForgetbenchError(f"{len(failed)} of {len(jobs)} runs failed (reasons in {args.results}/failures.jsonl); "
                               f"rerun the same sweep to retry them")
