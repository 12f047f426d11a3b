"""Where the runs of a sweep execute: this machine (one after the other, or one process per GPU) or Slurm.

Every run travels as a ``RunJob``, a picklable callable that rebuilds the task from its resolved spec and calls
``run_one``: the same code path as ``forgetbench run``, with the same skip-if-recorded check, checkpoints and failure
log. The results store takes concurrent writers, so any number of jobs may append to it at once.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ForgetbenchError, SpecError
from .records import ResultStore
from .run import run_one
from .tasks import TaskSpec
from .train import TrainOptions

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class RunJob:
    """One run, as a worker process or a Slurm job executes it."""

    task: dict  # TaskSpec.to_dict(): the resolved protocol, so a job needs no task file
    method: str
    params: dict
    seed: int
    results: str
    label: str = ""
    device: str | None = None
    options: dict = field(default_factory=dict)  # TrainOptions fields
    checkpoint_every: int = 0
    imports: tuple[str, ...] = ()  # modules to import first (they register datasets, models or methods)
    variants: tuple[dict, ...] = ()  # more params measured from the same fine-tune (a post-hoc knob's values)

    def __call__(self) -> str:
        """Run it; returns "complete" or "skipped" (already recorded); a failed run raises, after being logged."""
        for module in self.imports:
            importlib.import_module(module)
        _export_torch_distributed_env()
        task = TaskSpec.from_dict(self.task, source=f"sweep job for task {self.task.get('name')!r}")
        record = run_one(task, self.method, self.seed, ResultStore(self.results), params=self.params,
                         device=self.device, progress=False, options=TrainOptions(**self.options),
                         checkpoint_every=self.checkpoint_every, variants=self.variants)
        return "complete" if record is not None else "skipped"

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption or time-out: requeue the same job; it resumes from its last checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _export_torch_distributed_env() -> None:
    """Inside a Slurm job of several tasks (one per GPU), set the variables torchrun would, so the run goes DDP."""
    if "SUBMITIT_EXECUTOR" not in os.environ or "WORLD_SIZE" in os.environ:
        return
    try:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except (ImportError, RuntimeError):
        pass


@dataclass
class Outcome:
    label: str
    status: str  # complete, skipped, failed, submitted
    detail: str = ""


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split()) if not isinstance(e, ForgetbenchError) else \
        " ".join(str(e).split())


def _run_guarded(job: RunJob) -> Outcome:
    try:
        return Outcome(job.label, job())
    except Exception as e:  # the failure is in the failures log already; the sweep goes on with the other runs
        return Outcome(job.label, "failed", _one_line(e))


# ------------------------------------------------------------------------------------------------ local

def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def _init_worker(slots, threads: int | None) -> None:
    """Runs first in each worker: pin it to one GPU (before CUDA starts), share the CPU cores out."""
    if slots is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slots.get())
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


class LocalLauncher:
    """Runs on this machine: one after the other in this process (``jobs=1``), or ``jobs`` worker processes.

    ``jobs`` defaults to the number of visible GPUs (at least 1); with GPUs each worker gets one of them, on CPU the
    cores are shared out among the workers.
    """

    name = "local"

    def __init__(self, jobs: int | None = None):
        if jobs is not None and jobs < 1:
            raise SpecError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = jobs or max(1, visible_gpus())

    def launch(self, jobs: list[RunJob], report: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
        if self.jobs == 1 or len(jobs) <= 1:
            outcomes = []
            for job in jobs:
                outcomes.append(_run_guarded(job))
                report(outcomes[-1])
            return outcomes
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # never fork a process that may hold CUDA or torch threads
        gpus = visible_gpus()
        slots = None
        if gpus:
            slots = ctx.Queue()
            for i in range(self.jobs):
                slots.put(i % gpus)
        threads = None if gpus else max(1, (os.cpu_count() or 1) // self.jobs)
        outcomes = []
        with ProcessPoolExecutor(max_workers=min(self.jobs, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(slots, threads)) as pool:
            for outcome in pool.map(_run_guarded, jobs):
                outcomes.append(outcome)
                report(outcome)
        return outcomes


def _child_can_import_forgetbench() -> None:
    """Submitted jobs start a fresh interpreter: put this very forgetbench first on their path (an editable install of
    a checkout finds its baselines and task files through its install; a plain one is already in site-packages)."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p]])


# ------------------------------------------------------------------------------------------------ slurm

@dataclass
class SlurmLauncher:
    """Submits the runs as one Slurm job array through submitit; preempted or timed-out jobs are requeued and resume
    from their checkpoints.

    ``cluster`` None lets submitit pick (Slurm when ``sbatch`` is there); "local" and "debug" run the same job
    objects on this machine (submitit's local and debug executors), which is how it is tested. ``gpus_per_run`` > 1
    runs each job as that many tasks, data-parallel (DDP) across its GPUs. With ``wait`` the launcher waits for
    every job and reports each outcome; otherwise it returns once the array is submitted.
    """

    folder: str
    cluster: str | None = None
    partition: str | None = None
    time_min: int = 240
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    parallel: int | None = None
    max_requeues: int = 3
    account: str | None = None
    wait: bool = False
    name: str = "forgetbench"
    poll_s: float = 2.0  # with ``wait``: how often squeue is asked whether a job is still there

    def executor(self):
        try:
            import submitit
        except ImportError:
            raise SpecError("the slurm launcher needs submitit: pip install 'forgetbench[slurm]'") from None
        _child_can_import_forgetbench()
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                         slurm_max_num_timeout=self.max_requeues)
        gpus = self.gpus_per_run if self.gpus_per_run is not None else (1 if executor.cluster == "slurm" else 0)
        params = {"name": self.name, "timeout_min": self.time_min, "gpus_per_node": gpus,
                  "tasks_per_node": max(1, gpus), "cpus_per_task": self.cpus_per_run, "mem_gb": self.mem_gb,
                  "slurm_partition": self.partition, "slurm_array_parallelism": self.parallel,
                  "slurm_signal_delay_s": 120,  # time to finish the step in progress before the job is stopped
                  "slurm_additional_parameters": {"account": self.account} if self.account else None}
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def launch(self, jobs: list[RunJob], report: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
        if not jobs:
            return []
        executor = self.executor()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes a refusal; it is in the error below
                submitted = executor.submit_array(jobs)
        except Exception as e:  # sbatch refused the array: its own words, on one line
            why = " ".join(str(e).replace("sbatch: error:", "").split()) or type(e).__name__
            raise ForgetbenchError(f"the job array was not submitted: {why}"
                                   + (_GRES_HINT if "gres" in why.lower() else "")) from None
        outcomes = []
        for job, handle in zip(jobs, submitted):
            if not self.wait:
                outcome = Outcome(job.label, "submitted", f"job {handle.job_id}")
            elif executor.cluster == "slurm" and not _wait_for_slurm_job(handle, self.poll_s):
                outcome = Outcome(job.label, "failed", f"job {handle.job_id}: {_lost_job_reason(handle)}")
            else:
                try:
                    outcome = Outcome(job.label, handle.result(), f"job {handle.job_id}")
                except Exception as e:  # submitit's FailedJobError carries the job's traceback: keep its last line
                    lines = [line for line in str(e).splitlines() if line.strip()]
                    outcome = Outcome(job.label, "failed", f"job {handle.job_id}: {lines[-1] if lines else e}")
            outcomes.append(outcome)
            report(outcome)
        return outcomes


_GRES_HINT = " (on a cluster without GPUs, pass --gpus-per-run 0)"

# Slurm job states after which a job never runs again. PREEMPTED is left out: a requeued job passes through it.
_FINAL_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                 "TIMEOUT"}


def slurm_job_state(job_id: str) -> str | None:
    """The job's state as squeue reports it (a finished job too, while slurmctld remembers it), "" once slurmctld
    has forgotten it, or None when squeue cannot say (controller unreachable)."""
    try:
        proc = subprocess.run(["squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return "" if "invalid job id" in proc.stderr.lower() else None
    states = proc.stdout.split()
    return states[0] if states else ""


def _wait_for_slurm_job(handle, poll_s: float, grace_s: float = 15.0) -> bool:
    """Wait until the job has written its result (True) or has left Slurm without one (False).

    submitit alone asks ``sacct`` whether a job ended; on a cluster without accounting it never learns, and a job
    cancelled or killed before writing its result would be waited for forever. ``squeue`` knows on every cluster.
    ``grace_s`` lets a result written just before the end reach a shared file system.
    """
    result = handle.paths.result_pickle
    gone_since = None
    while not result.exists():
        state = slurm_job_state(handle.job_id)
        if state == "" or state in _FINAL_STATES:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > grace_s:
                return False
        else:  # queued, running, being requeued, or squeue cannot say: it may still write its result
            gone_since = None
        time.sleep(poll_s)
    return True


def _lost_job_reason(handle) -> str:
    state = slurm_job_state(handle.job_id) or "no longer known to Slurm"
    log = handle.stderr() or ""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return f"ended without a result (state {state})" + (f"; its log ends: {lines[-1]}" if lines else "")
