"""Expected GPU time of a task: training steps at an assumed step time, plus one pass over the images it evaluates.

The step times and extraction rates are **assumptions, not measurements** (no GPU was at hand when they were written);
``forgetbench bench --device cuda`` measures a machine, and its numbers belong in ``STEP_S`` / ``EXTRACT_IMAGES_PER_S``.
Not counted: the pre-trained model's evaluation (once per task, cached) and the CPU linear probes.
"""
from __future__ import annotations

import math
from typing import Any

#: Published sizes of the official parts (train, val, test) or of the whole set ("all").
SIZES = {"stanford-cars": {"train": 8144, "test": 8041}, "cifar10": {"train": 50000, "test": 10000},
         "cifar100": {"train": 50000, "test": 10000}, "dtd": {"train": 1880, "val": 1880, "test": 1880},
         "eurosat": {"all": 27000}, "gtsrb": {"train": 26640, "test": 12630}, "mnist": {"train": 60000, "test": 10000},
         "resisc45": {"all": 31500}, "sun397": {"all": 108754}, "svhn": {"train": 73257, "test": 26032},
         "fgvc-aircraft": {"train": 3334, "val": 3333, "test": 3333}, "caltech101": {"all": 8677},
         "flowers102": {"train": 1020, "val": 1020, "test": 6149}, "food101": {"train": 75750, "test": 25250},
         "oxford-pets": {"train": 3680, "test": 3669},
         "office-home/art": {"all": 2427}, "office-home/clipart": {"all": 4365},
         "office-home/product": {"all": 4439}, "office-home/real-world": {"all": 4357}}
#: Classes of the datasets an absent-class task may fine-tune on (its seen share of the images is trained on).
CLASSES = {"office-home/art": 65, "office-home/clipart": 65, "office-home/product": 65, "office-home/real-world": 65}

# Seconds per fine-tune step at batch 128 (a step at batch b costs b/128 of it) and evaluation images per second.
# ViT-B/32 at batch 128 in bf16 is input-pipeline bound at about 3,000 images/s on one A100/H100-class GPU with 8+
# loader workers (43 ms/step); a ViT-B/14 at 224 px costs ~4.5x the FLOPs of a ViT-B/32 (257 tokens vs 50), a ViT-B/16
# ~4x (197 tokens): compute-bound at ~70 ms, rounded up.
STEP_S = {"openclip:ViT-B-32@openai": 0.045, "timm:vit_base_patch14_dinov2.lvd142m?img_size=224": 0.15,
          "openclip:ViT-B-16@openai": 0.09}
EXTRACT_IMAGES_PER_S = {"openclip:ViT-B-32@openai": 3000, "timm:vit_base_patch14_dinov2.lvd142m?img_size=224": 1500,
                        "openclip:ViT-B-16@openai": 1000}


def splits(name: str) -> dict[str, int]:
    """Images per split under forgetbench's split rule (forgetbench/data/real/splits.py)."""
    s = SIZES[name]
    if "val" in s:
        return dict(s)
    test = s["test"] if "test" in s else int(0.2 * s["all"])
    pool = s["train"] if "test" in s else s["all"] - test
    val = min(int(0.1 * pool), 20000)
    return {"train": pool - val, "val": val, "test": test}


def train_steps(train: Any, dataset: str, seen_share: float = 1.0) -> int:
    """Optimiser steps of one fine-tune: ``train.steps``, else epochs over the (seen part of the) train split."""
    if train.steps is not None:
        return train.steps
    return train.epochs * math.ceil(int(splits(dataset)["train"] * seen_share) / train.batch_size)


def task_hours(task: Any) -> float | None:
    """GPU hours of one run (one method, one seed) of ``task``; None when its model or a dataset has no estimate."""
    if task.model not in STEP_S:
        return None
    step_s, rate = STEP_S[task.model] * task.train.batch_size / 128, EXTRACT_IMAGES_PER_S[task.model]
    try:
        if task.sequence is not None:
            datasets = task.sequence.finetune_datasets()
            steps = sum(train_steps(task.sequence.step_train(t, task.train), d) for t, d in enumerate(datasets))
            # after every step: zero-shot on each step's test split (a linear probe reads all splits)
            per_eval = sum(sum(splits(d).values()) if "lp" in task.sequence.accuracy else splits(d)["test"]
                           for d in datasets)
            per_eval += sum(sum(splits(d).values()) for d in task.evaluate.datasets)
            images = len(datasets) * per_eval
        else:
            target = task.finetune.dataset
            seen = task.finetune.seen_classes
            steps = train_steps(task.train, target, len(seen) / CLASSES[target] if seen else 1.0)
            images = sum(sum(splits(d).values()) for d in (target, *task.evaluate.datasets))
    except KeyError:  # a dataset without published sizes
        return None
    return (steps * step_s + images / rate) / 3600


def entry_hours(tasks: list) -> float | None:
    """GPU hours of every task's default methods and seeds; None when one task has no estimate."""
    total = 0.0
    for task in tasks:
        hours = task_hours(task)
        if hours is None:
            return None
        total += hours * len(task.methods) * len(task.seeds)
    return total
