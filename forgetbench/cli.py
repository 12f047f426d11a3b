"""The `forgetbench` command line: run, ls, validate, leaderboard, pretrain-mini."""
from __future__ import annotations

import argparse
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
    seeds = args.seeds if args.seeds is not None else list(task.seeds)
    store = ResultStore(args.results)
    print(f"task {task.name} v{task.version}: fine-tune {task.finetune.dataset}, held out: "
          f"{', '.join(task.evaluate.datasets)}; methods {', '.join(methods)}; seeds {seeds}; results -> {args.results}/")
    start = time.time()
    for method in methods:
        for seed in seeds:
            t = time.time()
            record = run_one(task, method, seed, store, device=args.device, force=args.force,
                             progress=not args.quiet)
            if record is None:
                print(f"  {method:>10} seed {seed}: already recorded, skipped (use --force to rerun)")
                continue
            s = record["metrics"]["summary"]
            print(f"  {method:>10} seed {seed}: target {record['metrics']['target']['acc']:.1f}%  "
                  f"mean dLP {s['delta_lp_mean']:+.2f}  worst dLP {s['delta_lp_worst']:+.2f}"
                  + (f"  mean dZS {s['delta_zs_mean']:+.2f}" if "delta_zs_mean" in s else "")
                  + f"  ({time.time() - t:.0f}s)")
    print(f"done in {time.time() - start:.0f}s\n")
    print(render_leaderboard(store.load(task.name)))
    return 0


def cmd_leaderboard(args) -> int:
    from .report.leaderboard import write_leaderboard
    from .results import ResultStore

    records = ResultStore(args.results).load()
    write_leaderboard(records, args.out)
    print(f"wrote {args.out} from {len(records)} records in {args.results}/")
    return 0


def cmd_plot(args) -> int:
    from .report.plots import plot_correlation, plot_trajectories
    from .results import ResultStore

    records = [r for r in ResultStore(args.results).load() if not args.task or r["task"]["name"] in args.task]
    if not records:
        from .errors import SpecError

        raise SpecError(f"no result records in {args.results}/" + (f" for task(s) {', '.join(args.task)}" if args.task else ""))
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
            print(f"  {name}{extra}")
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


def cmd_pretrain_mini(args) -> int:
    from .pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(samples=args.samples, epochs=args.epochs, seed=args.seed)
    command = "forgetbench pretrain-mini" + "".join(
        f" --{k} {v}" for k, v in (("samples", args.samples), ("epochs", args.epochs), ("seed", args.seed))
        if v != getattr(PretrainConfig, k))
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
    r.set_defaults(func=cmd_run)

    lb = sub.add_parser("leaderboard", help="regenerate leaderboard.md from result records")
    lb.add_argument("--results", default="results", help="results directory (default results/)")
    lb.add_argument("--out", default="leaderboard.md", help="output file (default leaderboard.md)")
    lb.set_defaults(func=cmd_leaderboard)

    pl = sub.add_parser("plot", help="plot forgetting against drift (correlation) or along training (trajectories)")
    pl.add_argument("kind", choices=["correlation", "trajectories"])
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

    pm = sub.add_parser("pretrain-mini", help="pre-train the mini CLIP (regenerates the shipped weights)")
    pm.add_argument("--samples", type=int, default=24000)
    pm.add_argument("--epochs", type=int, default=10)
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--out", type=Path, default=None, help="output folder (default: the package's weights folder)")
    pm.set_defaults(func=cmd_pretrain_mini)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ForgetbenchError as e:
        print(f"forgetbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("forgetbench: interrupted; runs not finished were not recorded", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
