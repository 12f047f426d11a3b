"""Choose the fine-tune learning rate and epochs of the real-weights task on Fashion-MNIST *validation* accuracy.

    python bench/real_effnet_tuning.py [--task real-effnet-fashion] [--lrs 1e-5,3e-5,1e-4] [--epochs 1,2]
                                       [--seed 0] [--method ft]

For every (lr, epochs) of the grid: the task's protocol (its model, its Fashion-MNIST sample, head, optimiser,
schedule), fine-tuned with ``--method`` on the train split, scored by the fine-tuned encoder and head on the
validation split; the test split is never looked at. A linear-probe head is fitted on the train split only here (the
protocol refits it on train + val, which would score the head on labels it was fitted to). The first row is the
pre-trained model with that head (no fine-tuning). Prints the table; the task file records the grid and the chosen
value. Run by hand (tens of minutes on two CPU cores); it is not part of the test suite.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from tabulate import tabulate

from forgetbench.data import get_dataset
from forgetbench.data.subsets import sample_subset
from forgetbench.dryrun import finetune_context
from forgetbench.features import extract
from forgetbench.methods import get_method
from forgetbench.run import build_reference, initial_head
from forgetbench.tasks import load_task
from forgetbench.train import finetune


def val_accuracy(ctx, ref, target, split: str) -> float:
    feats, labels = extract(ctx.student, ref.model, target, split, ref.device, desc=f"features {target.name}:{split}")
    with torch.no_grad():
        pred = ctx.head(torch.from_numpy(feats)).argmax(1).numpy()
    return 100.0 * float(np.mean(pred == labels))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="real-effnet-fashion")
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4")
    ap.add_argument("--epochs", default="1,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="ft")
    args = ap.parse_args()
    task = load_task(args.task)
    ref = build_reference(task, "cpu")
    target = get_dataset(task.finetune.dataset)
    if task.finetune.subset:
        target = sample_subset(target, dict(task.finetune.subset))
    train, val = task.finetune.train_split, task.finetune.val_split
    method_cls = get_method(args.method)
    kind = method_cls.head_init or task.train.head_init
    rows = []

    def start():
        method = method_cls(**task.params_for(method_cls.name))
        head = initial_head(kind, ref, target, task, None, refit_with_val=False)  # validation labels stay unseen
        return method, finetune_context(ref.model, method, head, task, target, "cpu")

    _, ctx = start()
    rows.append({"lr": "pre-trained", "epochs": 0, "steps": 0, f"val acc % ({target.name})": round(
        val_accuracy(ctx, ref, target, val), 2), "minutes": 0.0})
    for lr in [float(x) for x in args.lrs.split(",")]:
        for epochs in [int(x) for x in args.epochs.split(",")]:
            t = time.time()
            spec = dataclasses.replace(task.train, lr=lr, epochs=epochs, steps=None)
            method, ctx = start()
            log = finetune(ctx, method, spec, target.split(train), args.seed, progress=False)
            rows.append({"lr": f"{lr:g}", "epochs": epochs, "steps": log.steps,
                         f"val acc % ({target.name})": round(val_accuracy(ctx, ref, target, val), 2),
                         "minutes": round((time.time() - t) / 60, 1)})
            print(tabulate(rows, headers="keys", tablefmt="github"), flush=True)
    best = max(rows[1:], key=lambda r: (r[f"val acc % ({target.name})"], -float(r["lr"]), -r["epochs"]))
    print(f"best on validation: lr {best['lr']}, {best['epochs']} epochs ({args.method}, seed {args.seed})")


if __name__ == "__main__":
    main()
