"""How hard does a method's extra loss pull on the features, next to the task loss? Measured along a real fine-tune.

    python bench/regulariser_strength.py mini-noise --methods fda,proxy-fda [--seed 0] [--every 10]

Each method fine-tunes as in a run of the task (its head initialisation, its batch sampler, the task's train section,
the library's loop) and, every ``--every`` steps, the gradients of the task loss (cross-entropy of the head's logits)
and of the method's extra loss with respect to the batch's student features are taken on that step's batch; the
table shows the ratio of their norms ||d L_method / d f|| / ||d L_task / d f|| (median and the first and last
measured step), the mean extra loss, and the target's test accuracy at the end. A ratio far below 1 means the
regulariser barely opposes the task's pull on the features. The measuring does not change the fine-tune (it only
reads gradients). Run by hand; it is not part of the test suite.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F
from tabulate import tabulate

from forgetbench.data import get_dataset
from forgetbench.data.subsets import sample_subset
from forgetbench.errors import ForgetbenchError
from forgetbench.evaluate.evaluation import Evaluation, FrozenModel
from forgetbench.features import extract
from forgetbench.heads import head_accuracy, initial_head
from forgetbench.methods import FinetuneContext, get_method
from forgetbench.run import default_device
from forgetbench.tasks import load_task
from forgetbench.train import finetune


def measured(method, every: int, label_smoothing: float) -> list[dict]:
    """Wrap ``method.loss`` and ``after_step`` so that every ``every`` steps the two feature gradients are recorded."""
    log, step = [], {"n": 0}
    loss, after_step = method.loss, method.after_step

    def measuring_loss(ctx, batch):
        extra = loss(ctx, batch)
        if extra is not None and step["n"] % every == 0 and batch.features.requires_grad:
            task = F.cross_entropy(batch.logits.float(), batch.labels, label_smoothing=label_smoothing)
            g_task, = torch.autograd.grad(task, batch.features, retain_graph=True)
            g_extra, = torch.autograd.grad(extra, batch.features, retain_graph=True, allow_unused=True)
            norm = 0.0 if g_extra is None else float(g_extra.float().norm())
            log.append({"step": step["n"], "ratio": norm / max(float(g_task.float().norm()), 1e-12),
                        "extra": float(extra.detach())})
        return extra

    def counting_after_step(ctx, n):
        step["n"] = n
        after_step(ctx, n)

    method.loss, method.after_step = measuring_loss, counting_after_step
    return log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", help="task name or YAML path")
    ap.add_argument("--methods", required=True, help="comma-separated method names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=10, help="measure every N steps (default 10)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    try:
        task = load_task(args.task)
        classes = [get_method(m) for m in args.methods.split(",") if m.strip()]
    except ForgetbenchError as e:
        raise SystemExit(f"regulariser_strength: error: {e}") from None
    if args.every < 1:
        raise SystemExit(f"regulariser_strength: error: --every {args.every}: expected an integer >= 1")
    device = args.device or default_device()
    target = get_dataset(task.finetune.dataset)
    if task.finetune.subset:
        target = sample_subset(target, dict(task.finetune.subset))
    ref = FrozenModel.load(task.model, device)
    evaluation = Evaluation(task.evaluate, task.finetune.splits, ref).prepare([target])
    rows = []
    for cls in classes:
        method = cls(**task.params_for(cls.name))
        log = measured(method, args.every, task.train.label_smoothing)
        head = initial_head(method.head_init or task.train.head_init, evaluation, target,
                            evaluation.class_embeddings(target))
        ctx = FinetuneContext.start(ref.model, method, head, task, target, device)
        finetune(ctx, method, task.train, target.split(task.finetune.train_split), args.seed)
        with torch.no_grad():
            acc = head_accuracy(ctx.head, *extract(ctx.student, ref.model, target, task.finetune.test_split, device),
                                device)
        ratios = [e["ratio"] for e in log]
        rows.append([cls.name, len(log), f"{statistics.median(ratios):.3f}" if ratios else "-",
                     f"{ratios[0]:.3f}" if ratios else "-", f"{ratios[-1]:.3f}" if ratios else "-",
                     f"{statistics.fmean(e['extra'] for e in log):.4f}" if log else "-", f"{acc:.1f}"])
        print(f"  {cls.name}: " + " ".join(f"{e['step']}:{e['ratio']:.3f}" for e in log), file=sys.stderr)
    print(f"{task.name} v{task.version}, seed {args.seed}: ||d L_method / d f|| / ||d L_task / d f|| every "
          f"{args.every} steps")
    print(tabulate(rows, headers=["method", "measured", "median ratio", "first", "last", "mean extra loss",
                                  "target test %"], tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
