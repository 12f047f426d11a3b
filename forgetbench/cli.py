"""The `forgetbench` command line: run, ls, validate, leaderboard, pretrain-mini."""
from __future__ import annotations

import argparse
import builtins
import os
import sys
import time
from pathlib import Path

from .errors import ForgetbenchError

DEFAULT_TASK = "mini-shapes"


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind}")
        return [int(t) for t in items] if kind == "ints" else items
    return parse


def cmd_run(args) -> int:
    from .data import DATASETS
    from .methods import METHODS
    from .models import MODELS
    from .report.leaderboard import render_leaderboard
    from .results import ResultStore
    from .run import run_one
    from .tasks import check_names, load_task

    task = load_task(args.task)
    methods = args.methods or list(task.methods)
    check_names(task, DATASETS, MODELS, METHODS)
    for m in methods:
        if not m.endswith(".py"):
            METHODS.get(m)
    if args.dry_run:
        from .dryrun import dry_run

        dry_run(task, methods, device=args.device or "cpu", batch=args.dry_run_batch)
        return 0
    seeds = args.seeds if args.seeds is not None else list(task.seeds)
    store = ResultStore(args.results)
    if task.sequence is not None:
        return _run_sequence(task, methods, seeds, store, args)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    print = builtins.print if main_process else (lambda *a, **k: None)
    seen = f" (seen classes: {', '.join(task.finetune.seen_classes)})" if task.finetune.seen_classes else ""
    print(f"task {task.name} v{task.version}: fine-tune {task.finetune.dataset}{seen}, held out: "
          f"{', '.join(task.evaluate.datasets) or 'none'}; methods {', '.join(methods)}; seeds {seeds}; results -> {args.results}/")
    start = time.time()
    for method in methods:
        for seed in seeds:
            t = time.time()
            record = run_one(task, method, seed, store, device=args.device, force=args.force,
                             progress=not args.quiet, options=_train_options(args),
                             checkpoint_every=args.checkpoint_every,
                             weights_dir=args.weights_dir if args.save_weights else None)
            if record is None:
                if not main_process:
                    continue
                print(f"  {method:>10} seed {seed}: already recorded, skipped (use --force to rerun)")
                continue
            s, absent = record["metrics"]["summary"], record["metrics"].get("absent")
            print(f"  {method:>10} seed {seed}: target {record['metrics']['target']['acc']:.1f}%  "
                  + (f"mean dLP {s['delta_lp_mean']:+.2f}  worst dLP {s['delta_lp_worst']:+.2f}"
                     if "delta_lp_mean" in s else "")
                  + (f"  mean dZS {s['delta_zs_mean']:+.2f}" if "delta_zs_mean" in s else "")
                  + (f"absent/all {absent['acc']['absent_all']:.1f}% (calibrated "
                     f"{absent['calibrated']['absent_all']:.1f}%)  AUSUC {absent['ausuc']:.3f}" if absent else "")
                  + f"  ({time.time() - t:.0f}s)")
            if args.save_weights:
                from .run import weights_path

                saved = weights_path(args.weights_dir, task.name, record["method"]["name"], seed, record["run_id"])
                print(f"  {'':>10} weights -> {saved}")
    print(f"done in {time.time() - start:.0f}s\n")
    print(render_leaderboard(store.load(task.name)))
    if not main_process:
        from .distributed import shutdown

        shutdown()
    return 0


def _run_sequence(task, methods, seeds, store, args) -> int:
    """``run`` for a task with a sequence section: one record per (method, seed) with its accuracy matrices."""
    from .errors import SpecError
    from .report.leaderboard import render_leaderboard
    from .sequence import run_sequence

    plain = {"checkpoint_every": 0, "micro_batch": None, "channels_last": False, "compile": False, "workers": 0,
             "save_weights": False}
    changed = [k for k, v in plain.items() if getattr(args, k, v) not in (v, None)]
    if changed:
        raise SpecError(f"--{changed[0].replace('_', '-')} is not supported for sequence tasks yet; "
                        f"run {task.name!r} without it")
    seq = task.sequence
    steps = ", ".join(seq.datasets) if seq.datasets is not None else \
        f"{seq.split.dataset} in {seq.split.tasks} class groups (order seed {seq.split.class_order_seed})"
    print(f"task {task.name} v{task.version}: sequence {steps} (reference: {seq.reference}); held out: "
          f"{', '.join(task.evaluate.datasets) or 'none'}; methods {', '.join(methods)}; seeds {seeds}; "
          f"results -> {args.results}/")
    start = time.time()
    for method in methods:
        for seed in seeds:
            t = time.time()
            record = run_sequence(task, method, seed, store, device=args.device, force=args.force,
                                  progress=not args.quiet)
            if record is None:
                print(f"  {method:>10} seed {seed}: already recorded, skipped (use --force to rerun)")
                continue
            kind = record["sequence"]["accuracy"][0]
            s = record["metrics"][kind]["summary"]
            print(f"  {method:>10} seed {seed}: {kind} Avg {s['avg']:.1f}  Last {s['last']:.1f}"
                  + (f"  Transfer {s['transfer']:.1f}  BWT {s['bwt']:+.1f}" if "bwt" in s else "")
                  + (f"  held-out {s['heldout_delta_mean']:+.2f}" if "heldout_delta_mean" in s else "")
                  + f"  ({time.time() - t:.0f}s)")
    print(f"done in {time.time() - start:.0f}s\n")
    print(render_leaderboard(store.load(task.name)))
    return 0


def _train_options(args):
    from .errors import SpecError
    from .train import TrainOptions

    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise SpecError(f"--checkpoint-every must be >= 0 (0: no checkpoints), got {args.checkpoint_every}")
    return TrainOptions(micro_batch=args.micro_batch, channels_last=args.channels_last, compile=args.compile,
                        workers=args.workers)


def _add_execution_args(p: argparse.ArgumentParser, checkpoint_default: int | None = 0,
                        checkpoint_help: str = "off") -> None:
    """How runs execute (not part of the protocol): checkpoints, micro-batches, GPU speed-ups."""
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_default, metavar="N",
                   help="save a resumable checkpoint every N steps under RESULTS/checkpoints/; a killed run continues "
                        f"from it when rerun (default: {checkpoint_help})")
    p.add_argument("--micro-batch", type=int, default=None, metavar="N",
                   help="examples per forward pass; gradients accumulate up to the task's batch size (default: all)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster convs on GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder for training")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes (default 0)")


def _import(module: str) -> None:
    import importlib

    from .errors import SpecError

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise SpecError(f"--import {module}: cannot import it ({e}); it must be importable in every job too") from None


def cmd_sweep(args) -> int:
    from .data import DATASETS
    from .launchers import LocalLauncher, RunJob, SlurmLauncher
    from .methods import METHODS
    from .models import MODELS
    from .results import ResultStore
    from .sweep import expand, parse_grid, plan
    from .tasks import check_names, load_task

    for module in args.imports:
        _import(module)
    task = load_task(args.task)
    check_names(task, DATASETS, MODELS, METHODS)
    methods = args.methods or list(task.methods)
    seeds = args.seeds if args.seeds is not None else list(task.seeds)
    options = vars(_train_options(args))
    runs = expand(task, methods, seeds, parse_grid(args.grid))
    todo, done = plan(task, runs, ResultStore(args.results))
    print(f"sweep {task.name} v{task.version}: {len(runs)} runs ({len(methods)} methods, {len(seeds)} seeds"
          f"{', grid ' + ' '.join(args.grid) if args.grid else ''}); {len(done)} already recorded in "
          f"{args.results}/, launching {len(todo)} ({args.launcher})")
    if not todo:
        return 0
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
        every = 100 if args.checkpoint_every is None else args.checkpoint_every  # a preempted job resumes from it
    else:
        launcher, every = LocalLauncher(args.jobs), args.checkpoint_every or 0
    results = str(Path(args.results).resolve())  # jobs may start in another directory
    jobs = [RunJob(task=task.to_dict(), method=r.method, params=r.params, seed=r.seed, results=results,
                   label=r.label, device=args.device, options=options, checkpoint_every=every,
                   imports=tuple(args.imports)) for r in todo]
    outcomes = launcher.launch(jobs, report=lambda o: print(f"  {o.label}: {o.status}"
                                                             + (f" ({o.detail})" if o.detail else "")))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise ForgetbenchError(f"{len(failed)} of {len(jobs)} runs failed (reasons in {args.results}/failures.jsonl); "
                               f"rerun the same sweep to retry them")
    return 0


def cmd_leaderboard(args) -> int:
    from .report.html import write_leaderboard_html
    from .report.leaderboard import write_leaderboard
    from .results import ResultStore

    records = ResultStore(args.results).load()
    html = args.html or str(Path(args.out).with_suffix(".html"))
    figures = args.figures or str(Path(args.results) / "figures")
    write_leaderboard(records, args.out)
    write_leaderboard_html(records, html, figures)
    print(f"wrote {args.out} and {html} (figures from {figures}/) from {len(records)} records in {args.results}/")
    return 0


def cmd_plot(args) -> int:
    from .report.plots import plot_correlation, plot_trajectories
    from .results import ResultStore

    records = [r for r in ResultStore(args.results).load() if not args.task or r["task"]["name"] in args.task]
    if not records:
        from .errors import SpecError

        raise SpecError(f"no result records in {args.results}/" + (f" for task(s) {', '.join(args.task)}" if args.task else ""))
    if args.kind in ("sequence", "absent"):
        from .report.sequence_plots import plot_absent, plot_sequence_heldout, plot_sequence_matrices

        if args.kind == "absent":
            paths = plot_absent(records, args.out)
        else:  # two figures: <out>-matrix and <out>-heldout
            out = Path(args.out)
            paths = plot_sequence_matrices(records, out.parent / f"{out.name}-matrix")
            if any(r.get("sequence", {}).get("heldout") for r in records):
                paths += plot_sequence_heldout(records, out.parent / f"{out.name}-heldout")
        print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    from .results import RESULT_SCHEMA

    records = [r for r in records if r.get("schema", RESULT_SCHEMA) == RESULT_SCHEMA]  # sequences have no drift
    if args.kind == "correlation":
        paths = plot_correlation(records, args.out, per_checkpoint=args.per_checkpoint)
    else:
        paths = plot_trajectories(records, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_ls(args) -> int:
    from .data import DATASETS
    from .methods import METHODS
    from .models import MODELS
    from .tasks import TASKS

    from .data.real import by_name

    real_datasets = by_name()
    kinds = {"datasets": DATASETS, "models": MODELS, "methods": METHODS, "tasks": TASKS}
    if args.markdown:
        from tabulate import tabulate

        def cell(text: str) -> str:  # a bare "|" would end the Markdown cell
            return text.replace("|", "\\|")

        rows = [[f"`{n}`", cell(METHODS.get(n).description), cell(METHODS.get(n).reference),
                 ", ".join(f"{k}={v}" for k, v in METHODS.get(n).defaults.items()) or "–"] for n in METHODS.names()]
        print(tabulate(rows, headers=["method", "what it does", "reference", "defaults"], tablefmt="github"))
        return 0
    for kind in [args.what] if args.what else list(kinds):
        print(f"{kind}:")
        for name in kinds[kind].names():
            extra = ""
            if kind == "methods":
                cls = METHODS.get(name)
                extra = f"  {cls.description}" + (f" (defaults: {cls.defaults})" if cls.defaults else "")
            elif kind == "datasets" and name in real_datasets:
                spec = real_datasets[name]
                extra = f"  {spec.title}, read from DATA_ROOT/{spec.folder}/" + (
                    f" or {spec.system_folder}/" if spec.system_folder else "")
            elif kind == "models" and hasattr(MODELS.get(name), "distribution"):  # weights from an installed package
                builder = MODELS.get(name)
                options = "".join(f"[?{k}=N]" for k in builder.options)
                extra = f"{options}  {builder.timm_arch}, weights from the Python package {builder.distribution}"
            print(f"  {name}{extra}")
        if kind == "models":
            from .models.specs import SYNTAX

            print(f"  (and any spec: {SYNTAX})")
    return 0


def cmd_validate(args) -> int:
    from .data import DATASETS
    from .methods import METHODS
    from .models import MODELS
    from .tasks import check_names, load_task

    for name in args.tasks:
        task = load_task(name)
        check_names(task, DATASETS, MODELS, METHODS)
        print(f"{name}: ok ({task.name} v{task.version})")
    return 0


def _print_problems(problems) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)


def cmd_validate_results(args) -> int:
    from collections import Counter

    from .submit import check_submission

    status = 0
    for path in args.files:
        sub = check_submission(path, args.results)
        if sub.problems:
            _print_problems(sub.problems)
            print(f"forgetbench: error: {path}: {len(sub.problems)} problem(s)", file=sys.stderr)
            status = 2
            continue
        runs = Counter(f"{r['task']['name']} v{r['task']['version']}" for _, r in sub.records)
        stored = f"; {len(sub.already_stored)} already stored identically" if sub.already_stored else ""
        print(f"{path}: ok, {len(sub.records)} new record(s) ({', '.join(f'{t}: {n}' for t, n in sorted(runs.items())) or '-'})"
              f"{stored}")
    return status


def cmd_submit(args) -> int:
    from .submit import SubmissionError, submit

    try:
        result = submit(args.file, args.results)
    except SubmissionError as e:
        _print_problems(e.problems)
        print(f"forgetbench: error: {args.file}: refused ({len(e.problems)} problem(s)); {args.results}/ is unchanged",
              file=sys.stderr)
        return e.exit_code
    for path, n in result.added.items():
        print(f"added {n} record(s) to {path}")
    if result.already_stored:
        print(f"{len(result.already_stored)} record(s) were already stored identically; skipped")
    if result.added:
        print(f"regenerate the leaderboard with: forgetbench leaderboard --results {args.results}")
    return 0


def cmd_audit(args) -> int:
    from .audit import FailCondition, audit, write_report

    conditions = [FailCondition.parse(c) for c in args.fail_if or []]  # a typo fails now, not after the evaluation
    result = audit(args.reference, args.tuned, args.suite, exclude=tuple(args.exclude or ()), device=args.device,
                   seed=args.seed)
    paths = write_report(result, args.out)
    base = result["tuned"]["metadata"].get("model")
    if base and base != args.reference:  # e.g. a 64 px fine-tune audited at the model's default 224 px
        print(f"note: {args.tuned} was fine-tuned from {base!r} (its metadata says so), audited here against "
              f"{args.reference!r}; to get its run's numbers, audit with --reference {base!r}")
    print(result["summary_line"])
    print("wrote " + ", ".join(str(p) for p in paths))
    failed = []
    for c in conditions:
        value = c.value(result)
        holds = c.holds(result)
        print(f"--fail-if {c.text}: {c.metric} = {value:+.4f}: {'holds, failing' if holds else 'does not hold'}")
        failed += [c] if holds else []
    return 1 if failed else 0


def cmd_bench(args) -> int:
    from .bench import bench

    bench(args.model, methods=args.methods, device=args.device or "cpu", batch=args.batch, steps=args.steps)
    return 0


def cmd_download(args) -> int:
    from .data.real import download

    for name in args.datasets:
        print(f"{name}: {download(name)}")
    return 0


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Where real datasets are, and whether missing data and weights may be downloaded (never by default)."""
    p.add_argument("--data-root", default=None, metavar="DIR", help="folder of the real datasets (default: "
                   "$FORGETBENCH_DATA, else data_root in ~/.config/forgetbench/config.yaml)")
    p.add_argument("--download", action="store_true", help="let torchvision and the Hugging Face client fetch "
                   "missing datasets and weights (default: offline)")


_DATA_ENV = ("FORGETBENCH_DATA", "FORGETBENCH_DOWNLOAD", "FORGETBENCH_ALLOW_DOWNLOAD", "HF_HUB_OFFLINE")


def _apply_data_args(args) -> None:
    """The data flags become environment variables, so that child processes (sweeps, torchrun) see them too."""
    if getattr(args, "data_root", None):
        os.environ["FORGETBENCH_DATA"] = str(Path(args.data_root).expanduser().resolve())
    if getattr(args, "download", False):
        os.environ["FORGETBENCH_DOWNLOAD"] = os.environ["FORGETBENCH_ALLOW_DOWNLOAD"] = "1"
    elif os.environ.get("FORGETBENCH_ALLOW_DOWNLOAD", "").lower() not in ("1", "true", "yes"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the local cache or a file, never the network


def cmd_pretrain_mini(args) -> int:
    from .pretrain import PretrainConfig, pretrain

    given = {k: v for k, v in (("samples", args.samples), ("epochs", args.epochs), ("seed", args.seed))
             if v is not None and v != getattr(PretrainConfig, k)}
    cfg = PretrainConfig(**given)
    command = "forgetbench pretrain-mini" + "".join(f" --{k} {v}" for k, v in given.items())
    manifest = pretrain(cfg, out=args.out, command=command)
    print(f"wrote {manifest['file']} (sha256 {manifest['sha256']}) in {manifest['train_seconds']}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forgetbench", description="Measure concept forgetting of fine-tuned vision "
                                "foundation models, and the methods that prevent it.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a task for its methods and seeds; append records; print the table")
    r.add_argument("task", nargs="?", default=DEFAULT_TASK, help=f"task name or YAML path (default {DEFAULT_TASK})")
    r.add_argument("--methods", type=_csv("names"), help="comma-separated methods or .py files (default: the task's)")
    r.add_argument("--seeds", type=_csv("ints"), help="comma-separated seeds (default: the task's)")
    r.add_argument("--results", default="runs", help="results directory (default runs/; the committed "
                   "leaderboard reads results/)")
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    r.add_argument("--force", action="store_true", help="rerun and replace runs that are already recorded")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--dry-run", action="store_true", help="resolve the task, build its model (random weights when "
                   "its own are absent) and take one training step per method on fake data; writes nothing")
    r.add_argument("--dry-run-batch", type=int, default=8, metavar="N", help="batch of the dry-run step (default 8)")
    _add_data_args(r)
    r.add_argument("--save-weights", action="store_true", help="also save each fine-tuned image encoder as "
                   "safetensors under WEIGHTS_DIR/<task>/, e.g. for `forgetbench audit`")
    r.add_argument("--weights-dir", default="weights", help="where --save-weights saves (default weights/)")
    _add_execution_args(r)
    r.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="run a grid of methods x seeds x hyper-parameters here or on Slurm; runs "
                        "already recorded are skipped")
    sw.add_argument("task", help="task name or YAML path")
    sw.add_argument("--methods", type=_csv("names"), help="comma-separated methods or .py files (default: the task's)")
    sw.add_argument("--seeds", type=_csv("ints"), help="comma-separated seeds (default: the task's)")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="hyper-parameter values to sweep (repeatable); KEY applies to every method declaring it, "
                         "METHOD.KEY to one method")
    sw.add_argument("--results", default="runs", help="results directory (default runs/)")
    sw.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sw.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import MODULE first, here and in every job (it may register datasets, models, methods)")
    sw.add_argument("--launcher", choices=["local", "slurm"], default="local",
                    help="local: this machine; slurm: a submitit job array (default local)")
    sw.add_argument("--jobs", type=int, default=None,
                    help="local: runs at once, one process each (default: one per visible GPU, else 1)")
    sl = sw.add_argument_group("slurm launcher")
    sl.add_argument("--partition", default=None, help="Slurm partition")
    sl.add_argument("--time", type=int, default=240, metavar="MIN", help="time limit per job in minutes (default 240)")
    sl.add_argument("--gpus-per-run", type=int, default=None,
                    help="GPUs per run (default 1 on Slurm); more than 1 trains each run data-parallel")
    sl.add_argument("--cpus-per-run", type=int, default=None, help="CPU cores per run")
    sl.add_argument("--mem-gb", type=float, default=None, help="memory per run in GB")
    sl.add_argument("--parallel", type=int, default=None, help="at most this many array jobs at once")
    sl.add_argument("--max-requeues", type=int, default=3, help="requeues after preemption or time-out (default 3)")
    sl.add_argument("--account", default=None, help="Slurm account")
    sl.add_argument("--slurm-folder", default=None, help="submitit's logs and job files (default RESULTS/slurm/%%j)")
    sl.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], default=None,
                    help="force submitit's executor: local/debug run the jobs on this machine (for testing)")
    sl.add_argument("--wait", action="store_true", help="wait for the jobs and report each outcome")
    _add_execution_args(sw, None, "100 steps on Slurm, off locally")
    sw.set_defaults(func=cmd_sweep)

    lb = sub.add_parser("leaderboard", help="regenerate leaderboard.md and leaderboard.html from result records")
    lb.add_argument("--results", default="results", help="results directory (default results/)")
    lb.add_argument("--out", default="leaderboard.md", help="output file (default leaderboard.md)")
    lb.add_argument("--html", default=None, help="the same as one self-contained HTML page (default: --out with "
                    ".html, i.e. leaderboard.html)")
    lb.add_argument("--figures", default=None, help="PNG figures to embed in the page (default RESULTS/figures)")
    lb.set_defaults(func=cmd_leaderboard)

    pl = sub.add_parser("plot", help="plot forgetting against drift (correlation), along training (trajectories), "
                        "along a task sequence (sequence) or under absent classes (absent)")
    pl.add_argument("kind", choices=["correlation", "trajectories", "sequence", "absent"])
    pl.add_argument("--results", default="results", help="results directory (default results/)")
    pl.add_argument("--task", action="append", help="only this task (repeatable; default: all)")
    pl.add_argument("--out", type=Path, required=True, help="output prefix; .png, .svg (and .md) are written")
    pl.add_argument("--per-checkpoint", action="store_true", help="also one point per training checkpoint")
    pl.set_defaults(func=cmd_plot)

    ls = sub.add_parser("ls", help="list registered datasets, models, methods and tasks")
    ls.add_argument("what", nargs="?", choices=["datasets", "models", "methods", "tasks"])
    ls.add_argument("--markdown", action="store_true", help="the methods as a Markdown table (for the README)")
    ls.set_defaults(func=cmd_ls)

    v = sub.add_parser("validate", help="check task files: schema, types, and that every name exists")
    v.add_argument("tasks", nargs="+", help="task names or YAML paths")
    v.set_defaults(func=cmd_validate)

    vr = sub.add_parser("validate-results", help="check result files (JSON lines) before submitting them")
    vr.add_argument("files", nargs="+", help="result files, one record per line")
    vr.add_argument("--results", default=None, help="also check against the records stored in this folder")
    vr.set_defaults(func=cmd_validate_results)

    sm = sub.add_parser("submit", help="validate a result file and merge it into the results folder")
    sm.add_argument("file", help="result file (JSON lines, e.g. runs/<task>.jsonl)")
    sm.add_argument("--results", default="results", help="results folder to merge into (default results/)")
    sm.set_defaults(func=cmd_submit)

    au = sub.add_parser("audit", help="forgetting report of a fine-tuned checkpoint against its pre-trained model")
    au.add_argument("--reference", required=True, metavar="MODEL", help="the pre-trained model, by registered name "
                    "(see `forgetbench ls models`)")
    au.add_argument("--tuned", required=True, metavar="CHECKPOINT", help="fine-tuned weights: safetensors or a "
                    "PyTorch state dict (read with weights_only=True), of the image encoder or the whole model")
    au.add_argument("--suite", default="mini", help="held-out datasets: mini, standard, or a suite/task YAML file "
                    "(default mini)")
    au.add_argument("--exclude", action="append", metavar="DATASET", help="leave a suite dataset out (repeatable), "
                    "e.g. the one the model was fine-tuned on")
    au.add_argument("--out", default="audit", help="report folder (default audit/)")
    au.add_argument("--fail-if", action="append", metavar="COND", help="exit 1 when COND holds, e.g. "
                    "'mean_delta_lp<-2' (repeatable; for CI guards)")
    au.add_argument("--seed", type=int, default=None, help="seed of the drift estimates (default: the weights "
                    "file's run seed, else 0)")
    au.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_data_args(au)
    au.set_defaults(func=cmd_audit)

    be = sub.add_parser("bench", help="images/s of feature extraction and seconds per fine-tune step, per method")
    be.add_argument("--model", default="openclip:ViT-B-32@random", help="model name or spec (default "
                    "openclip:ViT-B-32@random; weights do not change the speed)")
    be.add_argument("--methods", type=_csv("names"), default=["ft", "ldifs"], help="comma-separated (default ft,ldifs)")
    be.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    be.add_argument("--batch", type=int, default=16, help="images per step and per extraction batch (default 16)")
    be.add_argument("--steps", type=int, default=3, help="timed steps per method, after one warm-up (default 3)")
    _add_data_args(be)
    be.set_defaults(func=cmd_bench)

    dl = sub.add_parser("download", help="let torchvision fetch datasets into the data root (those it can fetch)")
    dl.add_argument("datasets", nargs="+", help="dataset names, e.g. cifar10 dtd")
    _add_data_args(dl)
    dl.set_defaults(func=cmd_download)

    pm = sub.add_parser("pretrain-mini", help="pre-train the mini CLIP (regenerates the shipped weights)")
    pm.add_argument("--samples", type=int, default=None, help="captioned scenes per epoch (default 100000)")
    pm.add_argument("--epochs", type=int, default=None, help="(default 12)")
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights folder)")
    pm.set_defaults(func=cmd_pretrain_mini)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    saved = {k: os.environ.get(k) for k in _DATA_ENV}
    try:
        _apply_data_args(args)
        return args.func(args)
    except ForgetbenchError as e:
        print(f"forgetbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("forgetbench: interrupted; runs not finished were not recorded", file=sys.stderr)
        return 130
    finally:  # main() may be called in-process (tests, notebooks): leave the environment as it was
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


if __name__ == "__main__":
    sys.exit(main())
