"""One run -- a task, a method, a seed -- whatever the task's protocol: skipped when it is already recorded, run by
the protocol, its record stored; a run that fails is logged in the store's failures with its reason."""
from __future__ import annotations

import errno
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed, provenance
from .checkpoint import Checkpointer, discard
from .errors import DataError, ForgetbenchError, ResourceError, SpecError
from .methods import Method, get_method, method_source
from .modes import ADDS_MODULES, check_pair, mode_of
from .modes import identity as mode_identity
from .protocol import protocol_for
from .records import MethodRef, ModelRef, ResultStore, RunRecord, TaskRef, Timings, run_id
from .train import OutOfMemoryError, TrainOptions


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_path(store: ResultStore, rid: str) -> Path:
    """Where a run's resumable state lives while it trains: the results folder's own (git-ignored) scratch space."""
    return store.root / "checkpoints" / f"{rid}.pt"


def weights_path(weights_dir, task_name: str, method_name: str, seed: int, rid: str) -> Path:
    """Where ``run_one(..., weights_dir=...)`` saves a run's fine-tuned image encoder."""
    return Path(weights_dir) / task_name / f"{method_name}-seed{seed}-{rid}.safetensors"


@dataclass(frozen=True)
class RunRequest:
    """Everything a protocol needs to run one (task, method, seed)."""

    task: Any  # forgetbench.tasks.TaskSpec
    method: type[Method]
    params: dict  # the method's resolved hyper-parameters
    seed: int
    run_id: str
    device: str
    world: distributed.World
    progress: bool = True
    options: TrainOptions = TrainOptions()
    checkpoint_path: Path | None = None  # resumable state every ``checkpoint_every`` steps (None: no checkpoints)
    checkpoint_every: int = 0
    force: bool = False  # start over even when a checkpoint of the run exists
    weights_path: Path | None = None  # where to save the fine-tuned image encoder (None: not saved)

    def new_method(self) -> Method:
        """A fresh instance of the method (hooks keep per-fine-tune state)."""
        return self.method(**self.params)

    def method_sha256(self) -> str | None:
        """The hash of the method's source file, or None (recorded as unknown) when it has none to read."""
        try:
            return method_source(self.method).sha256
        except ForgetbenchError as e:
            warnings.warn(f"{e}: its records cannot be checked for staleness")
            return None

    def checkpointer(self, steps: int) -> Checkpointer | None:
        """The run's checkpointer for a fine-tune of ``steps`` steps, when checkpoints were asked for."""
        if self.checkpoint_path is None or not self.checkpoint_every or not steps:
            return None
        return Checkpointer(self.checkpoint_path, self.checkpoint_every, {"run_id": self.run_id, "steps": steps})

    def record_fields(self, reference: Any, timings: dict[str, float], training: dict[str, Any],
                      method_state: dict[str, Any] | None = None, model_notes: list[str] | None = None) -> dict:
        """The fields every record kind shares (``RunRecord``): the run's identity, method, model, provenance."""
        citation = self.method.citation or None
        state = None if method_state is None else {  # scalars a method reports, e.g. calibrate's gamma
            k: v for k, v in method_state.items()
            if isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))}
        return dict(
            run_id=self.run_id,
            task=TaskRef(name=self.task.name, version=self.task.version, spec=self.task.to_dict()),
            method=MethodRef(name=self.method.name, params=self.params, citation=citation, state=state,
                             source_sha256=self.method_sha256()),
            seed=self.seed,
            model=ModelRef(name=self.task.model, weights_sha256=reference.weights_hash, notes=model_notes),
            training=training,
            timings=Timings(**{k: round(v, 2) for k, v in timings.items()}),
            provenance={**provenance.collect(self.seed), "device": self.device, **execution(self.options, self.world)},
        )


def execution(options: TrainOptions, world: distributed.World) -> dict:
    """How the run was executed, when not plainly (processes, micro-batch, ...): provenance, not protocol."""
    changed = _changed_options(options)
    if world.parallel:
        changed["processes"] = world.size
    return {"execution": changed} if changed else {}


def _changed_options(options: TrainOptions) -> dict[str, Any]:
    plain = TrainOptions()
    return {k: getattr(options, k) for k in ("micro_batch", "channels_last", "compile", "workers")
            if getattr(options, k) != getattr(plain, k)}


def requested_options(options: TrainOptions, checkpoint_every: int | None, weights_dir) -> dict[str, Any]:
    """How a run is asked to execute beyond the plain way (what its protocol must support), by option name."""
    asked = _changed_options(options)
    if checkpoint_every:
        asked["checkpoint_every"] = checkpoint_every
    if weights_dir is not None:
        asked["save_weights"] = True
    if distributed.launched_by_torchrun():
        asked["processes"] = int(os.environ["WORLD_SIZE"])
    return asked


def check_runnable(task, method_cls: type) -> None:
    """Refuse, before any work, a method the task cannot run: one written for another protocol, or one that makes no
    sense in the task's fine-tuning mode. The one check that run, the command line and the dry run share."""
    protocol_for(task).check_method(method_cls)
    check_pair(mode_of(task.train), method_cls)


def run_one(task, method_name: str, seed: int, store: ResultStore | None = None, params: dict | None = None,
            device: str | None = None, force: bool = False, progress: bool = True,
            options: TrainOptions | None = None, checkpoint_every: int = 0, weights_dir=None,
            variants: list[dict] | tuple = ()) -> RunRecord | None:
    """Run (task, method, seed); append its record to ``store``. Returns the record, or None if it already exists.

    With ``checkpoint_every`` > 0 (and a store) the fine-tune saves its state every that many steps under
    ``<store>/checkpoints/`` and a rerun of a killed run continues from there; the file goes once the record is
    stored. A run that fails is written to the store's failures log with its reason and the error raised again;
    nothing is recorded as complete. Under torchrun every process trains and only rank 0 evaluates and writes
    (the others return None). With ``weights_dir``, the fine-tuned image encoder is saved there as safetensors
    (``weights_path``), for ``forgetbench audit`` or any other use.

    ``variants`` (more param overrides that differ from ``params`` in a post-hoc knob only, such as WiSE-FT's alpha)
    are measured from the same fine-tune, each its own record (the ones already recorded are left out); the first
    record is returned.
    """
    protocol = protocol_for(task)
    options = options or TrainOptions()
    method_cls = get_method(method_name)
    check_runnable(task, method_cls)
    if weights_dir is not None and mode_of(task.train) in ADDS_MODULES:
        raise SpecError(f"--save-weights saves the plain encoder, and train.mode {mode_of(task.train)!r} adds modules "
                        f"to it; run without --save-weights (or in mode full, bitfit, lora or linear)")
    runs = []
    for overrides in [params or {}, *variants]:
        resolved = method_cls.check_params({**task.params_for(method_cls.name), **overrides})
        rid = run_id(task.name, task.version, method_cls.name, resolved, seed, mode_identity(task.train))
        if store is None or force or not store.has(rid, task.name):
            runs.append((resolved, rid))
    if not runs:
        return None
    if len(runs) > 1 and weights_dir is not None:
        raise SpecError("saving weights measures one setting per run; run the post-hoc values one at a time "
                        "(without variants) to save each one's encoder")
    resolved, rid = runs[0]
    protocol.check_execution(requested_options(options, checkpoint_every, weights_dir))
    world, device = distributed.init(device or default_device())
    request = RunRequest(task=task, method=method_cls, params=resolved, seed=seed, run_id=rid, device=device,
                         world=world, progress=progress, options=options,
                         checkpoint_path=checkpoint_path(store, rid) if store is not None else None,
                         checkpoint_every=checkpoint_every, force=force,
                         weights_path=weights_path(weights_dir, task.name, method_cls.name, seed, rid)
                         if weights_dir is not None else None)
    try:
        records = protocol.run_many(request, runs) if len(runs) > 1 else [protocol.run(request)]
        first = None
        for record in records:
            if record is not None and store is not None:
                store.append(record, replace=force)
            first = first or record
        if first is not None and store is not None:
            discard(request.checkpoint_path)
        return first
    except Exception as e:
        error = _as_user_error(e, store)
        if store is not None and world.is_main:
            _log_failure(store, request, error)
        if error is e:
            raise
        raise error from e


def _as_user_error(e: Exception, store: ResultStore | None) -> Exception:
    """Out of memory or of disk space become a ResourceError, a missing file a DataError; the rest stays as it is."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" under {store.root}" if store is not None else ""
        return ResourceError(f"disk full while writing{where} ({e.strerror}); free some space and rerun: finished "
                             f"runs are kept, this one was not recorded")
    if isinstance(e, FileNotFoundError):  # a dataset's or a model's files, in practice
        return DataError(f"{e.filename or 'a file'} not found ({e.strerror or e}): data or weights the run needs are "
                         f"missing; nothing was recorded")
    if isinstance(e, OutOfMemoryError):
        return ResourceError(f"out of GPU memory outside the training steps ({' '.join(str(e).split())[:200]}); "
                             f"nothing was recorded")
    return e


def _log_failure(store: ResultStore, request: RunRequest, error: Exception) -> None:
    info = {"task": request.task.name, "task_version": request.task.version, "method": request.method.name,
            "params": request.params, "seed": request.seed,
            **({"mode": mode_identity(request.task.train)} if mode_identity(request.task.train) else {})}
    kind = "" if isinstance(error, ForgetbenchError) else " (unexpected; please report it)"
    try:
        store.write_failure(info, f"{type(error).__name__}{kind}: {error}")
    except OSError as e:  # the failures log is on the same full disk: say so, and keep the original error
        warnings.warn(f"could not write the failure to {store.root}: {e}", stacklevel=3)
