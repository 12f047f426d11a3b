"""The standard fine-tune loop. It knows nothing of any particular method: methods act only through their hooks.

Execution options (``TrainOptions``) change how a step is computed, never what: gradient accumulation over
micro-batches, data-parallel processes (``forgetbench.distributed``), channels-last memory, ``torch.compile`` and
data-loader workers give the same fine-tune as one process on the whole batch, up to floating-point order. With the
defaults the loop is exactly the plain one. Out of GPU memory, a step is retried with half the micro-batch.
"""
from __future__ import annotations

import logging
import math
import sys
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm import tqdm

from .peak_memory import PeakMemory
from .progress import bar_disable

from . import distributed
from .checkpoint import Checkpointer, capture, load_object_state, object_state, restore, rng_state, set_rng_state
from .data.base import split_labels
from .errors import DivergenceError, ResourceError, SpecError
from .features import Preprocessed
from .methods import Batch, FinetuneContext, Method, learning_rate

log = logging.getLogger("forgetbench")
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


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


@dataclass(frozen=True)
class TrainOptions:
    """How a fine-tune runs on the hardware at hand. None of these is part of the protocol or of the run's identity.

    - ``micro_batch``: examples per forward/backward in each process; gradients are accumulated up to the task's
      batch size (None: the whole batch at once). Methods whose loss couples the samples of a batch (FDA's k-NN graph,
      AFT's kernel, FLYP's contrastive loss) see micro-batches, so for them this changes the loss.
    - ``channels_last``: channels-last memory format for the encoder and its inputs (faster convolutions on GPUs).
    - ``compile``: ``torch.compile`` the encoder's training forward pass.
    - ``workers``: data-loader worker processes; ``pin_memory``: page-locked batches (default: when on CUDA).
    """

    micro_batch: int | None = None
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    pin_memory: bool | None = None

    def __post_init__(self):
        if self.micro_batch is not None and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise SpecError(f"micro-batch must be a positive integer, got {self.micro_batch!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise SpecError(f"data-loader workers must be an integer >= 0, got {self.workers!r}")


@dataclass
class TrainLog:
    steps: int
    final_loss: float | None
    losses: list  # (step, task loss, method loss) every 10 steps
    micro_batch: int | None = None  # the micro-batch the run ended with (smaller than asked after out-of-memory)
    oom_halvings: list = field(default_factory=list)  # steps at which out-of-memory halved the micro-batch
    trainable: dict | None = None  # parameters trained: {"encoder": n, "total": n (head and method's included)}
    memory: dict | None = None  # peak memory of the training steps (forgetbench.peak_memory)


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``module`` (timm's BatchNormAct2d included: it subclasses BatchNorm2d)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def total_steps(train_spec, n_train: int) -> int:
    if train_spec.steps is not None:
        return train_spec.steps
    return train_spec.epochs * math.ceil(n_train / train_spec.batch_size)


def epoch_batches(method: Method, ctx: FinetuneContext, labels: np.ndarray, batch_size: int, seed: int,
                  fresh: bool = True) -> list[list[int]]:
    """The batches (dataset indices) of the epoch seeded ``seed``: the method's sampler's, or seeded shuffling.

    Each also draws the one number a DataLoader takes when it starts iterating (for worker seeds; from the shuffling
    generator, or from torch's global one under a method's sampler), so that batches and random streams are those of
    a plain DataLoader loop. ``fresh=False`` (rebuilding an epoch on resume) skips the global draw: it was made before
    the checkpoint and lives in the restored RNG state.
    """
    sampler = method.batch_sampler(ctx, labels, batch_size, seed)
    if sampler is None:
        gen = torch.Generator().manual_seed(seed)
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        sampler = BatchSampler(RandomSampler(range(len(labels)), generator=gen), batch_size, drop_last=False)
    elif fresh:
        torch.empty((), dtype=torch.int64).random_()
    return [[int(i) for i in b] for b in sampler]


class _Step:
    """One optimiser step's forward and backward passes over this process's share of the global batch."""

    def __init__(self, ctx: FinetuneContext, method: Method, forward, train_spec, options: TrainOptions,
                 world: distributed.World):
        self.ctx, self.method, self.forward, self.spec, self.options, self.world = (
            ctx, method, forward, train_spec, options, world)
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if ctx.device.startswith("cuda") \
            else nullcontext

    def __call__(self, x, y, n_global: int, micro: int | None) -> torch.Tensor:
        """Gradients accumulated in ``.grad``; returns [weighted task loss, weighted method loss, out-of-memory flag],
        summed over processes. Each micro-batch's loss is weighted by its share of the global batch."""
        stats = torch.zeros(3, device=self.ctx.device)
        try:
            if x is not None:
                x, y = x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)
                if self.options.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                size = micro or len(x)
                for xs, ys in zip(x.split(size), y.split(size)):
                    stats[:2] += self._backward(xs, ys, len(xs) / n_global)
        except OutOfMemoryError:
            stats[2] = 1.0  # every process must learn of it, or the others wait forever in the next all-reduce
        return distributed.sum_across(stats, self.world)

    def _backward(self, x, y, weight: float) -> torch.Tensor:
        with self.autocast():
            feats = self.forward(x)
            logits = self.ctx.head(feats.float())
            task_loss = F.cross_entropy(logits, y, label_smoothing=self.spec.label_smoothing)
            extra = self.method.loss(self.ctx, Batch(x, y, feats, logits))
        loss = task_loss + (extra if extra is not None else 0.0)
        if weight != 1.0:  # one process, whole batch: exactly the plain loss
            loss = loss * weight
        if torch.isfinite(loss.detach()):  # a non-finite loss is reported by the caller, without a backward
            loss.backward()
        extra = extra.detach().float() if extra is not None else task_loss.new_zeros(())
        return torch.stack([task_loss.detach().float(), extra]) * weight


def finetune(ctx: FinetuneContext, method: Method, train_spec, split, seed: int, progress: bool = True,
             on_step: Callable[[int], None] | None = None, options: TrainOptions | None = None,
             checkpointer: Checkpointer | None = None, resume: dict | None = None,
             run_state: Callable[[], dict] | None = None, finalize: bool = True) -> TrainLog:
    """Fine-tune ``ctx.student`` and ``ctx.head`` on ``split`` under ``train_spec``, with ``method``'s hooks.

    ``on_step(step)`` is called after each step (checkpoint evaluation). A NaN or infinite loss stops the run with a
    DivergenceError naming the step; nothing is recorded for it.

    With a ``checkpointer``, the state is saved every ``checkpointer.every`` steps (with ``run_state()``, the caller's
    own); ``resume`` (a state ``checkpointer.load()`` returned) continues from it and gives the same result as a run
    that was never interrupted. ``finalize=False`` leaves the method's ``finalize`` to the caller (a post-hoc
    strength evaluated at several values from this one fine-tune).
    """
    options = options or TrainOptions()
    world = distributed.current()
    seed_everything(seed)
    extra_groups = method.setup(ctx) or []
    n_steps = total_steps(train_spec, len(split)) if method.trains_encoder else 0
    if n_steps == 0:
        if finalize:
            method.finalize(ctx)
        return TrainLog(0, None, [])
    ctx.student.train()
    frozen_norms = batchnorm_layers(ctx.student) if getattr(train_spec, "batchnorm", None) == "frozen" else []
    params = [{"params": [p for p in ctx.student.parameters() if p.requires_grad]},
              {"params": list(ctx.head.parameters())}] + list(extra_groups)
    trained = [p for g in params for p in g["params"]]
    trainable = {"encoder": sum(p.numel() for p in params[0]["params"]),  # what the mode trains
                 "total": sum(p.numel() for p in trained)}  # with the head and a method's own parameters
    lr = learning_rate(method, train_spec.lr)
    if train_spec.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=train_spec.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=train_spec.weight_decay)
    schedule = lr_lambda(train_spec.warmup_steps, n_steps) if train_spec.schedule == "cosine" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    if options.channels_last:
        ctx.student.to(memory_format=torch.channels_last)
    run_step = _Step(ctx, method, torch.compile(ctx.student) if options.compile else ctx.student, train_spec,
                     options, world)
    pin = options.pin_memory if options.pin_memory is not None else ctx.device.startswith("cuda")
    dataset = Preprocessed(split, ctx.model.preprocess)
    labels = split_labels(split)
    saved_elsewhere = {id(m) for m in (ctx.student, ctx.head, ctx.frozen, ctx)}

    def skip(value) -> bool:
        return id(value) in saved_elsewhere

    step, epoch, position, losses, loss_value, micro, halvings = 0, 0, 0, [], None, options.micro_batch, []
    batches = None
    if resume is not None:
        step, epoch, position = resume["step"], resume["epoch"], resume["position"]
        losses, loss_value, micro, halvings = resume["losses"], resume["final_loss"], resume["micro_batch"], \
            resume["oom_halvings"]
        batches = epoch_batches(method, ctx, labels, train_spec.batch_size, seed + epoch, fresh=False)
        ctx.student.load_state_dict(resume["student"])
        ctx.head.load_state_dict(resume["head"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        load_object_state(method, resume["method"])
        restore(ctx.state, resume["ctx_state"])
        set_rng_state(resume["rng"])  # last: nothing above may draw from the restored streams
        if world.is_main:  # worth seeing, as a plain line: the run did not start over
            tqdm.write(f"  resuming {method.name} at step {step} of {n_steps} from its checkpoint "
                       f"{checkpointer.path if checkpointer else ''}".rstrip(), file=sys.stderr)
    bar = tqdm(total=n_steps, initial=step, desc=f"fine-tuning ({method.name})", unit="step", leave=False,
               disable=bar_disable(progress and world.is_main))  # None: bars on a terminal only, never in logs
    peak = PeakMemory(ctx.device)
    with peak:  # the training steps' peak memory, for the record
        while step < n_steps:
            if batches is None:
                batches, position = epoch_batches(method, ctx, labels, train_spec.batch_size, seed + epoch), 0
            todo = batches[position:]
            shares = [distributed.shard(b, world) for b in todo]
            data = iter(DataLoader(dataset, batch_sampler=[s for s in shares if s], num_workers=options.workers,
                                   pin_memory=pin, generator=torch.Generator()))  # own generator: no global draw
            for share, batch in zip(shares, todo):
                x, y = next(data) if share else (None, None)
                for norm in frozen_norms:  # every step: evaluation along training puts the student back in train mode
                    norm.eval()
                while True:
                    opt.zero_grad(set_to_none=True)
                    stats = run_step(x, y, len(batch), micro)
                    if not stats[2]:
                        break
                    opt.zero_grad(set_to_none=True)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    current = micro or math.ceil(len(batch) / world.size)
                    if current == 1:
                        bar.close()
                        raise ResourceError(f"out of GPU memory at step {step + 1} even with a micro-batch of 1 "
                                            f"(method {method.name!r}); use a smaller model or a larger GPU")
                    micro = current // 2
                    halvings.append(step + 1)
                    log.warning("out of GPU memory at step %d: micro-batch halved to %d (gradient accumulation keeps "
                                "the batch size at %d)", step + 1, micro, train_spec.batch_size)
                task_loss, extra_loss = float(stats[0]), float(stats[1])
                loss_value = float(stats[0] + stats[1])
                if not math.isfinite(loss_value):
                    bar.close()
                    raise DivergenceError(f"loss became {loss_value} at step {step + 1} of {n_steps} "
                                          f"(method {method.name!r}, lr {lr:g}); nothing was recorded")
                distributed.sum_gradients(trained, world)
                if train_spec.grad_clip:
                    nn.utils.clip_grad_norm_(trained, train_spec.grad_clip)
                opt.step()
                sched.step()
                step += 1
                position += 1
                method.after_step(ctx, step)
                if step % 10 == 0 or step == n_steps:
                    losses.append((step, task_loss, extra_loss))
                    bar.set_postfix(loss=f"{loss_value:.3f}")
                bar.update(1)
                if on_step is not None:
                    on_step(step)
                if checkpointer is not None and world.is_main and checkpointer.due(step, n_steps):
                    checkpointer.save({
                        "step": step, "epoch": epoch, "position": position, "losses": losses, "final_loss": loss_value,
                        "micro_batch": micro, "oom_halvings": halvings,
                        "student": ctx.student.state_dict(), "head": ctx.head.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "method": object_state(method, skip), "ctx_state": capture(ctx.state, skip),
                        "rng": rng_state(), "run": run_state() if run_state is not None else {}})
                if step >= n_steps:
                    break
            epoch, batches = epoch + 1, None
    bar.close()
    ctx.student.eval()
    if finalize:
        method.finalize(ctx)
    return TrainLog(step, loss_value, losses, micro, halvings, trainable=trainable, memory=peak.record())
