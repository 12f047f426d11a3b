"""Resumable fine-tunes: everything a run needs to continue bit-for-bit after being killed, in one file.

A checkpoint holds the step, the data position (epoch and batch within it), the student and head weights, the
optimiser and scheduler, every random number generator, the method's own state (learned modules such as Proxy-FDA's
generator, running averages, generators, counters) and whatever run-level state the caller adds (the trajectory).
It is written with ``torch.save`` to a temporary file and renamed into place, and read back with
``weights_only=True``: only tensors and plain Python values, never arbitrary pickles.

Method state is captured generically from the method object's attributes, so a method needs no code to be resumable:
tensors, modules, torch/numpy generators, and dicts / lists / tuples of those and of plain values are saved; other
attributes (callables, samplers) are left alone because ``setup`` rebuilds them. On resume ``setup`` runs again first,
then saved values are copied *into* the rebuilt objects, so the optimiser keeps pointing at the same parameters.
"""
from __future__ import annotations

import errno
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write
from .errors import ResourceError

FORMAT = "forgetbench.checkpoint/1"
_KIND = "__checkpoint_kind__"
_PLAIN = (type(None), bool, int, float, str)


# ----------------------------------------------------------------------------------------------- random states

def rng_state() -> dict:
    """The global RNG states of Python, numpy and torch (and CUDA when it is in use)."""
    version, mt, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": random.getstate(),
             "numpy": [version, torch.from_numpy(np.asarray(mt, dtype=np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    version, mt, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((version, mt.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """random.setstate wants tuples all the way down; a round trip may give lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------------------------- object state

def capture(value: Any, skip: Callable[[Any], bool] = lambda v: False) -> Any:
    """A tree of tensors and plain values standing for ``value``, or ``NotImplemented`` when it cannot be saved.

    ``skip(v)`` marks objects saved elsewhere (the student, head and the frozen reference).
    """
    if skip(value):
        return NotImplemented
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, nn.Module):
        return {_KIND: "module", "state": {k: v.detach().clone() for k, v in value.state_dict().items()}}
    if isinstance(value, torch.Generator):
        return {_KIND: "torch-generator", "state": value.get_state()}
    if isinstance(value, np.random.Generator):
        return {_KIND: "numpy-generator", "state": value.bit_generator.state}
    if isinstance(value, np.ndarray) and value.dtype != object:
        return {_KIND: "ndarray", "data": torch.from_numpy(value.copy())}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        items = [(k, capture(v, skip)) for k, v in value.items() if isinstance(k, _PLAIN)]
        return {_KIND: "dict", "items": [[k, v] for k, v in items if v is not NotImplemented]}
    if isinstance(value, (list, tuple)):
        items = [capture(v, skip) for v in value]
        if any(v is NotImplemented for v in items):
            return NotImplemented  # a list with holes would restore shifted
        return {_KIND: "tuple" if isinstance(value, tuple) else "list", "items": items}
    return NotImplemented


@torch.no_grad()
def restore(current: Any, saved: Any) -> Any:
    """The value ``saved`` stands for, copied into ``current`` where possible (same tensors, modules, dicts)."""
    if isinstance(saved, torch.Tensor):
        if isinstance(current, torch.Tensor) and current.shape == saved.shape and current.dtype == saved.dtype:
            current.copy_(saved)
            return current
        return saved.to(current.device) if isinstance(current, torch.Tensor) else saved
    if not isinstance(saved, dict) or _KIND not in saved:
        return saved
    kind = saved[_KIND]
    if kind == "module":
        if not isinstance(current, nn.Module):
            raise ValueError("a saved module has no module to load into (setup did not rebuild it)")
        current.load_state_dict(saved["state"])
        return current
    if kind == "torch-generator":
        gen = current if isinstance(current, torch.Generator) else torch.Generator()
        gen.set_state(saved["state"])
        return gen
    if kind == "numpy-generator":
        gen = current if isinstance(current, np.random.Generator) else np.random.default_rng()
        gen.bit_generator.state = saved["state"]
        return gen
    if kind == "ndarray":
        return saved["data"].numpy().copy()
    if kind == "dict":
        out = current if isinstance(current, dict) else {}
        for key, value in saved["items"]:
            out[key] = restore(out.get(key), value)
        return out
    items = saved["items"]
    if kind == "list" and isinstance(current, list) and len(current) == len(items):
        current[:] = [restore(c, v) for c, v in zip(current, items)]
        return current
    olds = current if isinstance(current, (list, tuple)) and len(current) == len(items) else [None] * len(items)
    restored = [restore(c, v) for c, v in zip(olds, items)]
    return tuple(restored) if kind == "tuple" else restored


def object_state(obj: Any, skip: Callable[[Any], bool]) -> dict:
    """The saveable attributes of ``obj`` (a Method), by name."""
    out = {}
    for name, value in vars(obj).items():
        tree = capture(value, skip)
        if tree is not NotImplemented:
            out[name] = tree
    return out


def load_object_state(obj: Any, state: dict) -> None:
    for name, tree in state.items():
        setattr(obj, name, restore(getattr(obj, name, None), tree))


# ----------------------------------------------------------------------------------------------- the file

class Checkpointer:
    """Where one run's checkpoint lives, how often it is written, and which run it belongs to.

    ``identity`` (run id, step count, ...) is stored in the file; a checkpoint whose identity differs is ignored
    with a warning, never resumed from.
    """

    def __init__(self, path: str | os.PathLike, every: int, identity: dict):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"checkpoint interval must be a positive number of steps, got {every!r}")
        self.path = Path(path)
        self.every = every
        self.identity = dict(identity)

    def due(self, step: int, n_steps: int) -> bool:
        return step % self.every == 0 and step < n_steps  # the final step is followed by evaluation, not a resume

    def load(self) -> dict | None:
        """The saved state, or None when there is none (or it is unreadable or another run's: then with a warning)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, foreign or unsafe content: start over rather than trust it
            # torch's own message for an unsafe pickle advises weights_only=False, the one thing not to do: not quoted
            reason = "it needs Python objects other than tensors to unpickle; nothing in it was run" \
                if isinstance(e, pickle.UnpicklingError) else " ".join(f"{type(e).__name__}: {e}".split())[:200]
            warnings.warn(f"{self.path}: unreadable checkpoint ignored, the run starts from step 0 ({reason})",
                          stacklevel=2)
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("identity") != self.identity:
            warnings.warn(f"{self.path}: checkpoint of another run or format ignored, the run starts from step 0",
                          stacklevel=2)
            return None
        return state

    def save(self, state: dict) -> None:
        """Write atomically: a reader (or a resumed run) sees the previous checkpoint or this one, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ignore = self.path.parent / ".gitignore"
        if not ignore.exists():  # checkpoints are scratch files: keep them out of a committed results folder
            ignore.write_text("*\n")
        try:
            atomic_write(self.path, lambda f: torch.save({"format": FORMAT, "identity": self.identity, **state}, f),
                         mode=0o600)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceError(f"disk full while writing checkpoint {self.path} ({e.strerror}); free some space "
                                    f"or checkpoint less often (--checkpoint-every)") from None
            raise

    def remove(self) -> None:
        discard(self.path)


def discard(path: Path | None) -> None:
    """Remove a run's checkpoint (once its record is stored), and the scratch folder when it is left empty."""
    if path is None:
        return
    path.unlink(missing_ok=True)
    try:
        remaining = [p for p in path.parent.iterdir() if p.name != ".gitignore"]
        if not remaining:  # leave no empty scratch folder behind
            (path.parent / ".gitignore").unlink(missing_ok=True)
            path.parent.rmdir()
    except OSError:
        pass
