"""Sweeps on a real Slurm cluster: one job array through submitit, nothing resubmitted, --parallel, and a job
cancelled mid-run that resumes from its checkpoint when the sweep is run again.

Needs the single-node test cluster of ``.ci/slurm up`` (``SLURM_CONF`` pointing at it); skipped without one. Every
job is a fresh interpreter that imports torch, so the runs are tiny and each test takes well under a minute or two.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from forgetbench.cli import main
from forgetbench.records import ResultStore
from forgetbench.run import run_one
from forgetbench.tasks import TaskSpec

from needs import missing
from pipeline_helpers import tiny_task
from test_resume import comparable

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
TEST_CLUSTER = "forgetbench-ci"  # the ClusterName .ci/slurm writes: never submit to a cluster that is not ours
TEST_LIMIT_S = 420  # a test still running after this fails (SIGALRM) instead of holding CI until its time-out


def slurm(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def job_records(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job``, one dict per job (an array id gives every task of the array)."""
    out = slurm("scontrol", "-o", "show", "job", job_id)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def known_jobs() -> set[str]:
    """Every job slurmctld knows, finished ones included (the test cluster keeps them 10 minutes)."""
    return set(slurm("squeue", "-h", "--states=all", "-o", "%i").split())


def wait_for(condition, timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(poll)


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        missing("slurm", "Slurm is not installed (`.ci/slurm up` installs it from Debian and starts a test cluster)")
    proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        missing("slurm", f"no Slurm controller answers (SLURM_CONF={os.environ.get('SLURM_CONF', 'unset')}); "
                         f'start the test cluster with: eval "$(.ci/slurm up)"')
    name = re.search(r"^ClusterName\s*=\s*(\S+)", proc.stdout, re.M)
    if name is None or name[1] != TEST_CLUSTER:
        missing("slurm", f"the Slurm cluster here is {name[1] if name else 'unnamed'!r}, not the test cluster of "
                         f".ci/slurm ({TEST_CLUSTER!r}); the tests only submit to that one")
    states = slurm("sinfo", "-h", "-o", "%T").split()
    assert states and all(s in ("idle", "mixed", "allocated") for s in states), f"the test node is {states}"


class Sweeps:
    """Task files and command lines for sweeps on the test cluster; cancels the tests' own jobs afterwards."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.job_names: list[str] = []

    def task(self, name: str, checkpoints: int | None = None, **kwargs):
        spec = tiny_task(drift=(), **kwargs).to_dict()
        spec["name"] = f"tiny-{name}"  # the job name is forgetbench-<task>: what the clean-up cancels
        if checkpoints:
            spec["evaluate"]["checkpoints"] = checkpoints
        path = self.tmp_path / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        self.job_names.append(f"forgetbench-{spec['name']}")
        return TaskSpec.from_dict(spec), path

    @staticmethod
    def argv(task_file: Path, results: Path, *extra: str, gpus: str | None = "0") -> list[str]:
        """A sweep on the test cluster; ``gpus`` None leaves --gpus-per-run at its default (1 on Slurm)."""
        return ["sweep", str(task_file), "--results", str(results), "--launcher", "slurm", "--time", "10", "--import",
                "pipeline_helpers", *(["--gpus-per-run", gpus] if gpus is not None else []), *extra]

    def cancel_leftovers(self) -> None:
        for name in self.job_names:
            subprocess.run(["scancel", "--name", name], capture_output=True, timeout=60)


@pytest.fixture
def sweeps(cluster, tmp_path, monkeypatch):
    # jobs are fresh interpreters: they must find this forgetbench and the tiny test datasets
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    made = Sweeps(tmp_path)

    def too_long(signum, frame):
        raise TimeoutError(f"the test ran past {TEST_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield made
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        made.cancel_leftovers()


def finished_tasks(array: str) -> list[dict[str, str]]:
    """The array's tasks once slurmctld has closed them all (a job's result is written before its job ends)."""
    wait_for(lambda: all(t["JobState"] not in ("PENDING", "RUNNING", "COMPLETING") for t in job_records(array)), 60,
             f"the tasks of array {array} to end")
    return job_records(array)


def array_jobs(out: str, status: str) -> list[tuple[str, str, str]]:
    """(label, array id, index) of each run the sweep reported with ``status``."""
    return re.findall(rf"^  (.+): {status} \(job (\d+)_(\d+)\)$", out, re.M)


def test_sweep_submits_one_job_array_that_parallel_limits_and_a_rerun_submits_nothing(sweeps, tmp_path, capsys):
    _, task_file = sweeps.task("array", steps=1)
    results = tmp_path / "results"
    argv = sweeps.argv(task_file, results, "--methods", "ft,lp", "--seeds", "0", "--parallel", "1", "--wait")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 already recorded" in out and "launching 2 (slurm)" in out
    jobs = array_jobs(out, "complete")
    assert sorted(label for label, _, _ in jobs) == ["ft seed 0", "lp seed 0"]
    array = jobs[0][1]
    assert {a for _, a, _ in jobs} == {array} and sorted(i for _, _, i in jobs) == ["0", "1"]  # one array of two
    tasks = finished_tasks(array)
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1"]
    assert all(t["ArrayJobId"] == array and t["JobState"] == "COMPLETED" for t in tasks), tasks
    records = ResultStore(results).load()
    assert sorted(r.method.name for r in records) == ["ft", "lp"]  # each job stored its run's record

    # --parallel 1: what submitit asked for, what slurmctld holds, and what it did
    script = (results / "slurm" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%1" in script
    assert [t["ArrayTaskThrottle"] for t in tasks] == ["1", "1"]
    (start_a, end_a), (start_b, _) = sorted((t["StartTime"], t["EndTime"]) for t in tasks)
    assert end_a <= start_b, tasks  # the second started once the first had ended (unlimited, two CPUs run both)

    before = known_jobs()
    assert {f"{array}_0", f"{array}_1"} <= before
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 already recorded" in out and "launching 0" in out and "(job " not in out
    assert known_jobs() == before  # slurmctld received nothing
    assert ResultStore(results).load() == records


def test_a_refused_submission_is_one_line_and_submits_nothing(sweeps, tmp_path, capsys):
    _, task_file = sweeps.task("refused", steps=1)
    argv = sweeps.argv(task_file, tmp_path / "results", "--methods", "ft", "--seeds", "0", gpus=None)
    before = known_jobs()
    assert main(argv) == 2  # one GPU per run by default, and the test node has none
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forgetbench: error: the job array was not submitted: "), err
    assert "pass --gpus-per-run 0" in err[0]
    assert known_jobs() == before and not (tmp_path / "results" / "tiny-refused.jsonl").exists()


HELD_METHOD = '''
import os, time
from pathlib import Path
from forgetbench.methods import Method, register

@register
class HeldFT(Method):
    """Plain fine-tuning that logs each finished step and, when told to, stays in one step (once) until it is
    stopped."""
    name = "test-held-ft"
    citation = "test method"

    def after_step(self, ctx, step):
        with open(os.environ["FB_TEST_STEP_LOG"], "a") as log:
            log.write(f"{step}\\n")
        held = Path(os.environ["FB_TEST_HELD"])
        if str(step) == os.environ.get("FB_TEST_HOLD_AT") and not held.exists():
            held.write_text("held")
            while True:
                time.sleep(1)
'''


@pytest.fixture(scope="module")
def held_method(tmp_path_factory) -> str:
    """HELD_METHOD's file: one for the module, since a method name can be registered once per process."""
    path = tmp_path_factory.mktemp("method") / "held_ft.py"
    path.write_text(HELD_METHOD)
    return str(path)


@dataclass
class HeldJob:
    task: TaskSpec
    argv: list[str]  # the sweep, without --wait
    results: Path
    log: Path  # the steps the job finished, one a line
    job: str
    sweep: threading.Thread  # the same sweep with --wait, running in this process
    outcome: dict  # its exit code, once it returns


def held_job(sweeps, tmp_path, monkeypatch, method_file: str, name: str) -> HeldJob:
    """Starts a sweep with --wait (in a thread) of one 6-step HELD_METHOD run checkpointed every 2 steps, and returns
    once its job stays in step 3: the checkpoint of step 2 is on disk, step 3 is not saved."""
    task, task_file = sweeps.task(name, steps=6, checkpoints=2)  # a trajectory (steps 0, 2, 4, 6) too
    results, log = tmp_path / "results", tmp_path / "steps"
    argv = sweeps.argv(task_file, results, "--methods", method_file, "--seeds", "0", "--checkpoint-every", "2")
    for key, value in {"FB_TEST_STEP_LOG": log, "FB_TEST_HOLD_AT": 3, "FB_TEST_HELD": tmp_path / "held"}.items():
        monkeypatch.setenv(key, str(value))  # sbatch passes the environment on to the job
    outcome: dict = {}
    sweep = threading.Thread(target=lambda: outcome.update(code=main(argv + ["--wait"])))
    sweep.start()

    def job_id() -> str:
        return slurm("squeue", "-h", "--name", f"forgetbench-{task.name}", "-o", "%i").strip()

    wait_for(job_id, 60, "the job to be submitted")
    job = job_id()

    def at_step_3() -> bool:
        assert job_records(job)[0]["JobState"] in ("PENDING", "RUNNING"), job_records(job)
        return steps_logged(log)[-1:] == [3]

    wait_for(at_step_3, 240, f"job {job} to reach step 3")
    return HeldJob(task, argv, results, log, job, sweep, outcome)


def compare_with_uninterrupted(record, task, method_file: str) -> None:
    """Print the record's metrics beside an uninterrupted run's, then require equality of all but timings."""
    uninterrupted = run_one(task, method_file, 0, progress=False)
    resumed, whole = flat(record.to_json()["metrics"]), flat(uninterrupted.to_json()["metrics"])
    print(f"\n{'metric':<44} {'resumed':>22} {'uninterrupted':>22}")
    for key in sorted(set(resumed) | set(whole)):
        print(f"{key:<44} {resumed.get(key)!r:>22} {whole.get(key)!r:>22}")
    assert resumed == whole
    assert comparable(record) == comparable(uninterrupted)  # and everything else but timings and git state


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def steps_logged(path: Path) -> list[int]:
    return [int(s) for s in path.read_text().split()] if path.exists() else []


def test_cancelled_job_resumes_from_its_checkpoint_when_resubmitted(sweeps, held_method, tmp_path, monkeypatch,
                                                                    capsys):
    held = held_job(sweeps, tmp_path, monkeypatch, held_method, "cancel")
    task, argv, results, log, job = held.task, held.argv, held.results, held.log, held.job
    (ckpt,) = (results / "checkpoints").glob("*.pt")
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    slurm("scancel", job)
    held.sweep.join(timeout=120)  # a cancelled job leaves no result: the waiting sweep must notice, not wait forever
    assert not held.sweep.is_alive(), "the sweep still waits for a cancelled job"
    assert job_records(job)[0]["JobState"] == "CANCELLED"
    out = capsys.readouterr()
    assert held.outcome["code"] == 2
    assert f"test-held-ft seed 0: failed (job {job}: ended without a result (state CANCELLED)" in out.out
    assert out.err.strip().splitlines() == [f"forgetbench: error: 1 of 1 runs failed (reasons in {results}/"
                                            "failures.jsonl); rerun the same sweep to retry them"]
    assert steps_logged(log) == [1, 2, 3]
    assert ResultStore(results).load() == []  # the cancelled job recorded nothing ...
    assert torch.load(ckpt, weights_only=True)["step"] == 2  # ... and left its checkpoint

    assert main(argv + ["--wait"]) == 0  # the same sweep again
    out = capsys.readouterr().out
    assert "0 already recorded" in out and "launching 1 (slurm)" in out
    (resubmitted,) = re.findall(r": complete \(job (\S+)\)", out)
    assert resubmitted != job
    assert steps_logged(log) == [1, 2, 3, 3, 4, 5, 6]  # continued after step 2: steps 1 and 2 not trained again
    (record,) = ResultStore(results).load()
    assert not ckpt.exists()  # removed once the record is stored
    assert [p["step"] for p in record.to_json()["trajectory"]] == [0, 2, 4, 6]
    compare_with_uninterrupted(record, task, held_method)


def test_preempted_job_requeues_itself_and_resumes_from_its_checkpoint(sweeps, held_method, tmp_path, monkeypatch,
                                                                       capsys):
    held = held_job(sweeps, tmp_path, monkeypatch, held_method, "requeue")
    job = held.job
    # what Slurm sends before a time limit or a preemption (submitit asks for it): the job requeues itself
    slurm("scancel", "--signal=USR2", job)
    wait_for(lambda: job_records(job)[0]["Restarts"] == "1" and job_records(job)[0]["JobState"] == "PENDING", 60,
             f"job {job} to be requeued")
    slurm("scontrol", "update", f"JobId={job}", "StartTime=now")  # Slurm holds a requeued job back 2 minutes
    held.sweep.join(timeout=240)
    assert not held.sweep.is_alive(), f"job {job} never finished after its requeue"
    assert held.outcome["code"] == 0
    out = capsys.readouterr().out
    assert f"test-held-ft seed 0: complete (job {job})" in out  # the same job, requeued, not a new one
    assert steps_logged(held.log) == [1, 2, 3, 3, 4, 5, 6]
    job_log = "".join(p.read_text() for p in (held.results / "slurm" / job).glob("*_log.err"))
    assert "resuming test-held-ft at step 2 of 6" in job_log
    (record,) = ResultStore(held.results).load()
    compare_with_uninterrupted(record, held.task, held_method)
