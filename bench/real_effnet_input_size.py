"""What the input size of the real-weights task costs, and what the pre-trained linear probe gives at each size.

    python bench/real_effnet_input_size.py [--task real-effnet-fashion] [--sizes 32,64,96,128] [--datasets a,b]

For each size: the pre-trained EfficientNet-Lite0's feature-extraction speed and the time of one training step
(forward + backward, batch of the task) on this machine, then the task's linear probe (its C grid, its splits, its
Fashion-MNIST sample) on the fine-tune dataset and every held-out dataset. Reference features are cached like a run's,
so a second call is fast. Run by hand (it takes minutes); it is not part of the test suite.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from tabulate import tabulate

from forgetbench.data import get_dataset
from forgetbench.data.subsets import sample_subset
from forgetbench.evaluate.probe import linear_probe
from forgetbench.features import cached_extract
from forgetbench.models import get_model, state_dict_hash
from forgetbench.tasks import load_task


def step_seconds(model, size: int, batch: int, repeats: int = 2) -> float:
    """Seconds of one forward + backward pass of the encoder and a linear head on random images.

    On a copy: a training-mode forward pass moves BatchNorm's running statistics, and the features of the model
    itself are cached under the hash of its pre-trained weights.
    """
    visual = copy.deepcopy(model.visual)
    visual.train()
    for p in visual.parameters():
        p.requires_grad_(True)
    head = torch.nn.Linear(model.feature_dim, 10)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    torch.nn.functional.cross_entropy(head(visual(x)), y).backward()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.cross_entropy(head(visual(x)), y).backward()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="real-effnet-fashion")
    ap.add_argument("--sizes", default="32,64,96,128", help="input sizes in pixels (comma-separated)")
    ap.add_argument("--datasets", default=None, help="only these datasets (comma-separated; default: all of the task's)")
    args = ap.parse_args()
    task = load_task(args.task)
    base = task.model.partition("?")[0]
    names = [task.finetune.dataset, *task.evaluate.datasets]
    if args.datasets:
        names = [n for n in names if n in args.datasets.split(",")]
    datasets = {n: get_dataset(n) for n in names}
    if task.finetune.subset and task.finetune.dataset in datasets:
        datasets[task.finetune.dataset] = sample_subset(datasets[task.finetune.dataset], dict(task.finetune.subset))
    splits = (task.finetune.train_split, task.finetune.val_split, task.finetune.test_split)
    lp = task.evaluate.linear_probe
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        model = get_model(f"{base}?img_size={size}")
        h = state_dict_hash(model.visual)
        row = {"input px": size, "train step s": round(step_seconds(model, size, task.train.batch_size), 2)}
        assert state_dict_hash(model.visual) == h, "timing the step changed the model"
        images, seconds = 0, 0.0
        for name, ds in datasets.items():
            t = time.perf_counter()
            feats = {s: cached_extract(model.visual, model, ds, s, weights_hash=h) for s in splits}
            seconds += time.perf_counter() - t
            images += sum(len(f[1]) for f in feats.values())
            row[f"LP {name}"] = round(linear_probe(*(feats[s] for s in splits), lp.C_grid, lp.max_iter).acc, 1)
        row["images/s (extraction, uncached)"] = round(images / seconds) if seconds > 1 else "cached"
        rows.append(row)
        print(tabulate(rows, headers="keys", tablefmt="github"), flush=True)


if __name__ == "__main__":
    main()
