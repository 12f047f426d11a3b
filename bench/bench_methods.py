"""Time per fine-tune step of every registered method, relative to plain fine-tuning (`ft`) and to `feature-l2`.

    python bench/bench_methods.py [--task mini-shapes] [--batch 64] [--warmup 5] [--steps 20] [--methods fda,proxy-fda]

The context is built as a run builds it (`FinetuneContext.start`: frozen pre-trained encoder, student copy, zero-shot
head); each method then runs through the real training loop (`forgetbench.train.finetune`) for warmup + steps steps.
A step's time is the time between two consecutive steps' ends (forward, the method's loss, backward, optimiser step,
after_step), on images preprocessed once beforehand so that decoding does not blur the ratios; the table shows the
median over the timed steps. Setup and finalize (Fisher estimate, teacher logits, class similarities, ...) are shown apart, in
seconds. ``--clock cpu`` times steps in process CPU time instead of wall time: on a machine shared with other work
it is far steadier (use it with ``--threads 1``, where CPU time is the step's own work). Without the shipped mini CLIP weights the untrained mini CLIP is timed instead (same cost per step).
Run by hand; it is not part of the test suite.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import time

import torch
from tabulate import tabulate

from forgetbench.data import get_dataset
from forgetbench.errors import WeightsError
from forgetbench.evaluate.evaluation import Evaluation, FrozenModel
from forgetbench.evaluate.probe import zeroshot_weights
from forgetbench.heads import initial_head
from forgetbench.methods import METHODS, FinetuneContext
from forgetbench.models import get_model, state_dict_hash
from forgetbench.run import default_device
from forgetbench.tasks import load_task
from forgetbench.train import finetune


class Preprocessed(torch.utils.data.Dataset):
    """A training split whose images are already model inputs (so the timed loop does no image decoding)."""

    def __init__(self, split, preprocess, limit: int):
        n = min(len(split), limit)
        self.images = torch.stack([preprocess(split[i][0]) for i in range(n)])
        self.labels = [int(split[i][1]) for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def build_model(name: str):
    try:
        return get_model(name)
    except WeightsError:
        if name != "mini-clip":
            raise
        from forgetbench.models.mini_clip import CONFIG_NAME, build_untrained, preprocess_for
        from forgetbench.models.openclip import wrap_openclip

        print("no shipped mini CLIP weights: timing the untrained mini CLIP (same cost per step)")
        clip = build_untrained(0)
        return wrap_openclip("mini-clip", CONFIG_NAME, clip, preprocess_for(clip))


def passthrough(preprocess):
    """Tensors (pre-processed images) pass; PIL images (methods' own data) get the model's preprocessing."""
    return lambda img: img if isinstance(img, torch.Tensor) else preprocess(img)


def time_method(name: str, model, target, task, head0, split, device: str, warmup: int, steps: int,
                clock=time.perf_counter):
    """(median seconds per step, seconds outside the timed steps) of one method; None if it trains nothing."""
    method = METHODS.get(name)(**task.params_for(name))
    if not method.trains_encoder:
        return None
    ctx = FinetuneContext.start(model, method, copy.deepcopy(head0), task, target, device)
    spec = dataclasses.replace(task.train, steps=warmup + steps, warmup_steps=0)
    ends = []

    def on_step(step):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ends.append(clock())

    start = clock()
    finetune(ctx, method, spec, split, seed=0, progress=False, on_step=on_step)
    total = clock() - start
    per_step = [b - a for a, b in zip(ends[warmup - 1:], ends[warmup:])] if warmup else \
        [b - a for a, b in zip(ends, ends[1:])]
    median = statistics.median(per_step)
    return median, total - median * len(ends)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mini-shapes")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time steps in wall time (default) or in this process's CPU time (steadier on a busy machine)")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 2:
        ap.error("need --warmup >= 1 and --steps >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or default_device()
    task = load_task(args.task)
    task = dataclasses.replace(task, train=dataclasses.replace(task.train, batch_size=args.batch))
    model = build_model(task.model)
    model.visual.to(device).eval()
    for p in model.visual.parameters():
        p.requires_grad_(False)
    target = get_dataset(task.finetune.dataset)
    frozen = FrozenModel(model, state_dict_hash(model.visual), device)
    evaluation = Evaluation(task.evaluate, task.finetune.splits, frozen)
    text = zeroshot_weights(model, target) if model.has_text else None
    head0 = initial_head("zeroshot" if text is not None else "linear-probe", evaluation, target, text)
    split = Preprocessed(target.split(task.finetune.train_split), model.preprocess,
                         limit=args.batch * (args.warmup + args.steps + 1))
    model = dataclasses.replace(model, preprocess=passthrough(model.preprocess))
    names = args.methods.split(",") if args.methods else METHODS.names()
    for required in ("ft", "feature-l2"):
        if required not in names:
            names.insert(0, required)
    results = {}
    for name in names:
        t = time.perf_counter()
        results[name] = time_method(name, model, target, task, head0, split, device, args.warmup, args.steps,
                                    clock=time.process_time if args.clock == "cpu" else time.perf_counter)
        print(f"  {name}: {time.perf_counter() - t:.1f}s", flush=True)
    ft, fl2 = results["ft"][0], results["feature-l2"][0]
    rows = [[name, "-", "-", "-", "no training steps"] if r is None else
            [name, f"{1000 * r[0]:.1f}", f"{r[0] / ft:.2f}", f"{r[0] / fl2:.2f}", f"{r[1]:.1f}"]
            for name, r in results.items()]
    print(f"\n{task.model} on {device}, batch {args.batch}, median of {args.steps} steps after {args.warmup} warm-up, "
          f"{args.clock} time, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(tabulate(rows, headers=["method", "ms/step", "x ft", "x feature-l2", "setup+finalize s"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
