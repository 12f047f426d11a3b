"""Data-parallel fine-tuning of one run across processes started by ``torchrun``.

Every process builds the same run (same seed, same reference, same initial head) and computes the same global batch
of indices each step; each one loads and processes its own contiguous share of it. Gradients of every trained
parameter (encoder, head, and a method's own modules such as Proxy-FDA's generator) are summed across processes
before the optimiser step, which every process then takes identically. Each micro-batch's loss is weighted by its
share of the global batch, so the summed gradient is the gradient of the mean loss over the global batch: the same
as one process on the same batch, up to the order of floating-point sums.

This is DDP's arithmetic (an all-reduce of gradients after backward) done explicitly rather than through
``torch.nn.parallel.DistributedDataParallel``: that wrapper synchronises one module only, while methods own
parameters outside the encoder and call the encoder more than once per step.

Backends: NCCL on GPUs, gloo on CPU. Only rank 0 evaluates, writes checkpoints and writes the record.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str | None) -> tuple[World, str | None]:
    """Join the process group when started by torchrun (once per process); returns the world and this rank's device.

    Without torchrun: a world of one, the device unchanged.
    """
    if not launched_by_torchrun():
        return World(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank), device


def current() -> World:
    """The world of an already-initialised process group (a world of one otherwise)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: list[int], world: World) -> list[int]:
    """This rank's contiguous share of a global batch; shares differ in size by at most one."""
    n, size = len(indices), world.size
    start = world.rank * (n // size) + min(world.rank, n % size)
    return indices[start: start + n // size + (1 if world.rank < n % size else 0)]


def sum_across(values: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise sum over ranks (in place); a no-op for a world of one."""
    if world.parallel:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def sum_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Sum each parameter's gradient over ranks, as one flat buffer per dtype.

    A parameter that got a gradient on no rank keeps ``grad=None`` (the optimiser skips it, as on one process); one
    that got a gradient on some ranks only counts zeros for the others.
    """
    if not world.parallel:
        return
    device = params[0].device if params else torch.device("cpu")
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in live:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset: offset + n].view_as(p.grad))
            offset += n
