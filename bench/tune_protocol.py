"""Choose a task's fine-tune hyper-parameters for `ft` on the target's validation split, from a small grid.

    python bench/tune_protocol.py mini-noise --grid lr=1e-4,3e-4,1e-3             # seeds 0,1; prints the table
    python bench/tune_protocol.py mini-noise --grid lr=1e-4,3e-4 --grid epochs=4,8 --seeds 0,1,2
    python bench/tune_protocol.py mini-noise --grid lr=1e-4,3e-4,1e-3 --no-heldout  # faster: target only

The rule, fixed before any number is seen (``RULE``): the grid point with the highest mean target validation
accuracy over the seeds; every point within ``--tolerance`` (1 point) of that best counts as a tie, and ties go to
the smallest values, in the order the --grid options are given (the smaller learning rate first): a smaller step
that does as well on the target moves the model less. Test accuracy and the held-out mean ΔLP are printed for the
reader; they take no part in the choice.

It ends with the task file's `train` values and `tuning:` section to paste (schema: ``forgetbench.tasks.TuningSpec``);
when the task already has a tuning section over the same grid and seeds, it says whether this run agrees with it.
Each point is a real fine-tune through the library (``forgetbench.train.finetune``), so a 3-point grid over 2 seeds is
6 fine-tunes; the pre-trained model's features are cached as in `forgetbench run`.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import textwrap
import time

import numpy as np
import torch
from tabulate import tabulate

from forgetbench.data import get_dataset
from forgetbench.data.subsets import sample_subset
from forgetbench.errors import ForgetbenchError
from forgetbench.evaluate.evaluation import Evaluation, FrozenModel
from forgetbench.features import extract
from forgetbench.heads import head_accuracy, initial_head
from forgetbench.methods import FinetuneContext, get_method
from forgetbench.protocol import protocol_for
from forgetbench.records import summarize_heldout
from forgetbench.run import default_device
from forgetbench.tasks import TUNABLE, load_task
from forgetbench.train import finetune

RULE = ("highest mean target validation accuracy over the seeds; points within {tol:g} point(s) of the best are "
        "ties, and ties go to the smallest values ({order} first)")


def parse_grid(items: list[str], train) -> dict[str, list]:
    """``["lr=1e-4,3e-4"]`` -> ``{"lr": [1e-4, 3e-4]}`` (ints for integer fields), checked against the train fields."""
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        if key not in TUNABLE or not values:
            raise SystemExit(f"tune_protocol: error: --grid {item!r}: expected KEY=V1,V2,... with KEY one of "
                             f"{', '.join(TUNABLE)}")
        cast = int if isinstance(getattr(train, key), int) or key in ("epochs", "steps", "batch_size") else float
        try:
            grid[key] = sorted({cast(v) for v in values.split(",") if v.strip()})
        except ValueError:
            raise SystemExit(f"tune_protocol: error: --grid {item!r}: every value must be a {cast.__name__}") from None
    if not grid:
        raise SystemExit("tune_protocol: error: give at least one --grid KEY=V1,V2,...")
    return grid


def select(points: list[dict], grid: dict[str, list], tolerance: float) -> dict:
    """The rule: the best mean validation accuracy, ties (within ``tolerance``) to the smallest values in grid order."""
    best = max(p["val"] for p in points)
    # inclusive, with slack for rounding: accuracies are counts / n in floating point, and a point exactly
    # ``tolerance`` below the best (81.55 against 82.55) must not fall out of the ties by 2e-14
    ties = [p for p in points if p["val"] >= best - tolerance - 1e-9]
    return min(ties, key=lambda p: tuple(p["values"][k] for k in grid))


class Trial:
    """Everything one fine-tune of the task needs that does not depend on the grid point or the seed."""

    def __init__(self, task, method: str, heldout: bool, device: str):
        self.task, self.heldout, self.device = task, heldout, device
        self.method_cls = get_method(method)
        names = [task.finetune.dataset, *(task.evaluate.datasets if heldout else ())]
        self.datasets = {n: get_dataset(n) for n in names}
        if task.finetune.subset:  # the task's seeded sample of its fine-tune dataset, as in a run
            self.datasets[task.finetune.dataset] = sample_subset(self.datasets[task.finetune.dataset],
                                                                 dict(task.finetune.subset))
        self.ref = FrozenModel.load(task.model, device)
        self.evaluation = Evaluation(task.evaluate, task.finetune.splits, self.ref).prepare(self.datasets.values())
        self.target = self.datasets[task.finetune.dataset]

    def run(self, values: dict, seed: int) -> dict:
        """Fine-tune at ``values`` (train fields) with ``seed``: target val/test accuracy, held-out mean ΔLP."""
        task = dataclasses.replace(self.task, train=dataclasses.replace(self.task.train, **values))
        method = self.method_cls(**task.params_for(self.method_cls.name))
        # a probe head fitted on train alone: the validation labels that score this point stay unseen
        head = initial_head(method.head_init or task.train.head_init, self.evaluation, self.target,
                            self.evaluation.class_embeddings(self.target), refit_with_val=False)
        ctx = FinetuneContext.start(self.ref.model, method, head, task, self.target, self.device)
        finetune(ctx, method, task.train, self.target.split(task.finetune.train_split), seed)
        out = {split: self.accuracy(ctx, getattr(task.finetune, f"{split}_split")) for split in ("val", "test")}
        if self.heldout:
            out["dlp"] = summarize_heldout(self.evaluation.heldout(ctx.student, self.datasets, seed))["delta_lp_mean"]
        return out

    @torch.no_grad()
    def accuracy(self, ctx, split: str) -> float:
        return head_accuracy(ctx.head, *extract(ctx.student, self.ref.model, self.target, split, self.device),
                             self.device)


def yaml_number(x) -> str:
    return f"{x:.1e}".replace("e-0", "e-") if isinstance(x, float) else str(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", help="task name or YAML path")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="train field and values to try")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    ap.add_argument("--method", default="ft", help="the method tuned for (default ft)")
    ap.add_argument("--tolerance", type=float, default=1.0, help="points of val accuracy counted as a tie (default 1)")
    ap.add_argument("--no-heldout", dest="heldout", action="store_false", help="skip the held-out ΔLP column")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    try:
        task = load_task(args.task)
        get_method(args.method)
    except ForgetbenchError as e:
        raise SystemExit(f"tune_protocol: error: {e}") from None
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"tune_protocol: error: --seeds {args.seeds!r}: expected integers separated by commas") \
            from None
    if protocol_for(task).name != "finetune":
        raise SystemExit(f"tune_protocol: error: {task.name} is a {protocol_for(task).name} task; tune a plain "
                         f"fine-tune (protocol finetune)")
    grid = parse_grid(args.grid, task.train)
    trial = Trial(task, args.method, args.heldout, args.device or default_device())
    start, points = time.time(), []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        runs = []
        for seed in seeds:
            runs.append(trial.run(values, seed))
            print(f"  {values} seed {seed}: val {runs[-1]['val']:.1f}  test {runs[-1]['test']:.1f}"
                  + (f"  held-out mean dLP {runs[-1]['dlp']:+.2f}" if args.heldout else "")
                  + f"  ({time.time() - start:.0f}s)", file=sys.stderr)
        points.append({"values": values, "runs": runs, "val": float(np.mean([r["val"] for r in runs]))})
    chosen = select(points, grid, args.tolerance)
    rule = RULE.format(tol=args.tolerance, order=", then ".join(grid))
    headers = [*grid, *(f"val s{s}" for s in seeds), "val mean", *(f"test s{s}" for s in seeds), "test mean"]
    headers += ["held-out mean ΔLP"] if args.heldout else []
    rows = []
    for p in points:
        row = [yaml_number(v) for v in p["values"].values()] + [f"{r['val']:.1f}" for r in p["runs"]]
        row += [f"{p['val']:.2f}"] + [f"{r['test']:.1f}" for r in p["runs"]]
        row += [f"{np.mean([r['test'] for r in p['runs']]):.2f}"]
        row += [f"{np.mean([r['dlp'] for r in p['runs']]):+.2f}"] if args.heldout else []
        rows.append(row + (["← chosen"] if p is chosen else [""]))
    print(f"{task.name} v{task.version}: {args.method} on {task.finetune.dataset}, seeds {seeds}; rule: {rule}")
    print(tabulate(rows, headers=headers + [""], tablefmt="github", disable_numparse=True))
    print(f"\n# paste into tasks/{task.name}.yaml ({time.time() - start:.0f}s)")
    print("train:\n" + "".join(f"  {k}: {yaml_number(v)}\n" for k, v in chosen["values"].items()), end="")
    print(f"tuning:\n  method: {args.method}\n  seeds: {seeds}\n  rule: >-")
    print(textwrap.fill(rule, 116, initial_indent="    ", subsequent_indent="    "))
    print("  grid: {" + ", ".join(f"{k}: [{', '.join(yaml_number(v) for v in vs)}]" for k, vs in grid.items()) + "}")
    print("  val_acc:")
    for p in points:
        print("    - {" + ", ".join(f"{k}: {yaml_number(v)}" for k, v in p["values"].items())
              + f", acc: {p['val']:.2f}" + "}")
    agree = compare_with_task(task, grid, seeds, args.method, points, chosen)
    if agree is not None:
        print(f"\n{task.name}'s tuning section: {agree}")
    return 0


def compare_with_task(task, grid, seeds, method, points, chosen) -> str | None:
    """Whether this run reproduces the task's own tuning section (None when that section tuned something else)."""
    t = task.tuning
    if t is None or list(t.seeds) != seeds or t.method != method or {k: list(v) for k, v in t.grid.items()} != grid:
        return None
    written = {tuple(e[k] for k in grid): e["acc"] for e in t.val_acc}
    worst = max(abs(written[tuple(p["values"].values())] - p["val"]) for p in points)
    same = all(getattr(task.train, k) == v for k, v in chosen["values"].items())
    return (f"{'same' if same else 'a DIFFERENT'} choice; validation accuracies within {worst:.2f} points "
            f"of the ones written there")


if __name__ == "__main__":
    sys.exit(main())
