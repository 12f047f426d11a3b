"""The standard fine-tune loop. It knows nothing of any particular method: methods act only through their hooks."""
from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data.base import split_labels
from .errors import DivergenceError
from .features import loader
from .methods import Batch, FinetuneContext, Method


class Head(nn.Linear):
    """Linear classifier on L2-normalised features (CLIP zero-shot heads have this form)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(features, dim=-1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(warmup: int, total: int):
    """Linear warm-up to the base lr, then cosine decay to 0 at ``total`` steps."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


@dataclass
class TrainLog:
    steps: int
    final_loss: float | None
    losses: list  # (step, task loss, method loss) every 10 steps


def total_steps(train_spec, n_train: int) -> int:
    if train_spec.steps is not None:
        return train_spec.steps
    return train_spec.epochs * math.ceil(n_train / train_spec.batch_size)


def finetune(ctx: FinetuneContext, method: Method, train_spec, split, seed: int, progress: bool = True,
             on_step=None) -> TrainLog:
    """Fine-tune ``ctx.student`` and ``ctx.head`` on ``split`` under ``train_spec``, with ``method``'s hooks.

    ``on_step(step)`` is called after each step (checkpoint evaluation). A NaN or infinite loss stops the run with a
    DivergenceError naming the step; nothing is recorded for it.
    """
    seed_everything(seed)
    extra_groups = method.setup(ctx) or []
    n_steps = total_steps(train_spec, len(split)) if method.trains_encoder else 0
    if n_steps == 0:
        method.finalize(ctx)
        return TrainLog(0, None, [])
    ctx.student.train()
    params = [{"params": [p for p in ctx.student.parameters() if p.requires_grad]},
              {"params": list(ctx.head.parameters())}] + list(extra_groups)
    if train_spec.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=train_spec.lr, momentum=0.9, weight_decay=train_spec.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=train_spec.lr, weight_decay=train_spec.weight_decay)
    schedule = lr_lambda(train_spec.warmup_steps, n_steps) if train_spec.schedule == "cosine" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.startswith("cuda") else nullcontext()
    step, log, loss = 0, [], None
    bar = tqdm(total=n_steps, desc=f"fine-tuning ({method.name})", unit="step", leave=False,
               disable=None if progress else True)  # None: bars on a terminal only, never in logs
    epoch, labels = 0, split_labels(split)
    while step < n_steps:
        sampler = method.batch_sampler(ctx, labels, train_spec.batch_size, seed + epoch)
        for x, y in loader(split, ctx.model.preprocess, train_spec.batch_size, shuffle=True, seed=seed + epoch,
                           batch_sampler=sampler):
            x, y = x.to(ctx.device), y.to(ctx.device)
            with autocast:
                feats = ctx.student(x)
                logits = ctx.head(feats.float())
                task_loss = F.cross_entropy(logits, y, label_smoothing=train_spec.label_smoothing)
                extra = method.loss(ctx, Batch(x, y, feats, logits))
            loss = task_loss + (extra if extra is not None else 0.0)
            if not torch.isfinite(loss):
                bar.close()
                raise DivergenceError(f"loss became {loss.item()} at step {step + 1} of {n_steps} "
                                      f"(method {method.name!r}, lr {train_spec.lr}); nothing was recorded")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train_spec.grad_clip:
                nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], train_spec.grad_clip)
            opt.step()
            sched.step()
            step += 1
            method.after_step(ctx, step)
            if step % 10 == 0 or step == n_steps:
                log.append((step, float(task_loss.detach()), float(extra.detach()) if extra is not None else 0.0))
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            bar.update(1)
            if on_step is not None:
                on_step(step)
            if step >= n_steps:
                break
        epoch += 1
    bar.close()
    ctx.student.eval()
    method.finalize(ctx)
    return TrainLog(step, float(loss.detach()), log)
