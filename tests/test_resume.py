"""Resumable runs: a run killed mid-training continues from its checkpoint to the record an uninterrupted run gives."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from forgetbench.checkpoint import Checkpointer, capture, load_object_state, object_state, restore
from forgetbench.methods import METHODS, get_method, register
from forgetbench.records import ResultStore, run_id
from forgetbench.run import checkpoint_path, run_one

from pipeline_helpers import tiny_task

ROOT = Path(__file__).resolve().parent.parent


def comparable(record: dict) -> dict:
    """A record without what legitimately differs between two executions: timings, peak memory, clock time, git
    state."""
    record = json.loads(json.dumps(record.to_json()))
    record.pop("timings")
    record["training"].pop("peak_memory_mb", None)
    for key in ("timestamp_utc", "git_commit", "git_dirty"):
        record["provenance"].pop(key)
    return record


# ------------------------------------------------------------------------------------- killed with SIGKILL

SLOW_METHOD = '''
import os, time
from pathlib import Path
from forgetbench.methods import Method, register

@register
class SlowFT(Method):
    """Plain fine-tuning that says which step it finished and then pauses, so a test can kill it mid-run."""
    name = "test-slow-ft"
    citation = "test method"

    def after_step(self, ctx, step):
        Path(os.environ["FB_TEST_STEP_FILE"]).write_text(str(step))
        time.sleep(float(os.environ.get("FB_TEST_SLEEP", "0")))
'''

RUNNER = '''
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import pipeline_helpers  # registers the tiny test datasets
from forgetbench.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.slow  # fresh interpreters: imports dominate
def test_killed_run_resumes_to_the_uninterrupted_record(tmp_path, monkeypatch):
    task = tiny_task(steps=6, drift=("l2",))
    spec = task.to_dict()
    spec["evaluate"]["checkpoints"] = 2  # a trajectory (steps 0, 2, 4, 6) must survive the kill too
    task = type(task).from_dict(spec)
    task_file = tmp_path / "tiny.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    method_file = tmp_path / "slow_ft.py"
    method_file.write_text(SLOW_METHOD)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    step_file = tmp_path / "step"
    monkeypatch.setenv("FB_TEST_STEP_FILE", str(step_file))
    results = tmp_path / "results"
    command = [sys.executable, str(runner), "run", str(task_file), "--methods", str(method_file), "--seeds", "0",
               "--results", str(results), "--checkpoint-every", "2", "--quiet"]

    proc = subprocess.Popen(command, env={**os.environ, "FB_TEST_SLEEP": "0.5"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (step_file.exists() and step_file.read_text() == "3"):  # checkpoint of step 2 written, in step 3
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the run never reached step 3"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    proc.stderr.close()
    store = ResultStore(results)
    assert store.load() == []  # nothing recorded by the killed run
    (ckpt,) = (results / "checkpoints").glob("*.pt")
    assert torch.load(ckpt, weights_only=True)["step"] == 2

    resumed = subprocess.run(command, env={**os.environ, "FB_TEST_SLEEP": "0"}, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (record,) = store.load()
    assert not ckpt.exists() and not (results / "checkpoints").exists()  # removed once the record is stored
    assert [p.step for p in record.trajectory] == [0, 2, 4, 6]

    monkeypatch.setenv("FB_TEST_SLEEP", "0")
    uninterrupted = run_one(task, str(method_file), 0, progress=False)
    assert comparable(record) == comparable(uninterrupted)


# ------------------------------------------------------------------------------------- method state

class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing is logged as a failure, like a SIGKILL."""


_CRASH_AT: dict[str, int | None] = {}


def crashing(base: str) -> str:
    """A registered copy of ``base`` that dies after step ``_CRASH_AT[name]`` (when set)."""
    name = f"test-crashing-{base}"
    if name not in METHODS:
        parent = METHODS.get(base)

        def after_step(self, ctx, step, parent=parent, name=name):
            parent.after_step(self, ctx, step)
            if _CRASH_AT.get(name) == step:
                raise Crash()

        register(type(f"Crashing{parent.__name__}", (parent,), {"name": name, "after_step": after_step}))
    return name


@pytest.mark.parametrize("base, params", [
    ("proxy-fda", {}),  # a learned generator module with its own optimiser group
    ("zscl", {"n_ref": 48, "ref_batch": 16, "snapshots": 3}),  # running weight averages, a cursor, a permutation
])
def test_resume_restores_the_methods_own_state(tmp_path, base, params):
    name = crashing(base)
    task = tiny_task(steps=5, drift=())
    store = ResultStore(tmp_path)
    _CRASH_AT[name] = 3  # the checkpoint of step 2 is the last one; step 3 is done again after the resume
    with pytest.raises(Crash):
        run_one(task, name, 0, store, params=params, progress=False, checkpoint_every=2)
    _CRASH_AT[name] = None
    rid = next(iter(Path(tmp_path, "checkpoints").glob("*.pt"))).stem
    assert torch.load(checkpoint_path(store, rid), weights_only=True)["step"] == 2
    resumed = run_one(task, name, 0, store, params=params, progress=False, checkpoint_every=2)
    assert not checkpoint_path(store, rid).exists()
    assert comparable(resumed) == comparable(run_one(task, name, 0, params=params, progress=False))


def test_a_damaged_checkpoint_is_ignored_with_a_warning(tmp_path):
    task = tiny_task(steps=3, drift=())
    store = ResultStore(tmp_path)
    path = checkpoint_path(store, run_id("tiny", 1, "ft", get_method("ft").check_params({}), 0))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable checkpoint ignored"):
        record = run_one(task, "ft", 0, store, progress=False, checkpoint_every=1)
    assert record.training["steps"] == 3 and store.load() == [record] and not path.exists()


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    ckpt = Checkpointer(tmp_path / "c.pt", 1, {"run_id": "a" * 16, "steps": 5})
    ckpt.save({"step": 1})
    assert ckpt.load()["step"] == 1
    assert (tmp_path / ".gitignore").read_text() == "*\n"  # scratch files stay out of a committed results folder
    with pytest.warns(UserWarning, match="another run"):
        assert Checkpointer(tmp_path / "c.pt", 1, {"run_id": "b" * 16, "steps": 5}).load() is None
    ckpt.remove()
    assert not tmp_path.exists()


# ------------------------------------------------------------------------------------- capture / restore

class Owner:
    """What a method may keep: a learned module, tensors, generators, counters, nested containers."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.module = nn.Linear(3, 2)
        self.param = nn.Parameter(torch.randn(4))
        self.gen = torch.Generator().manual_seed(seed)
        self.np_gen = np.random.default_rng(seed)
        self.avg = {"w": {"a": torch.randn(2)}, "count": seed}
        self.order = [seed, seed + 1]
        self.pair = (torch.randn(1), "x")
        self.array = np.arange(3) * seed
        self.callback = lambda: None  # rebuilt by setup, never saved


def test_restore_copies_into_the_rebuilt_objects():
    saved = Owner(1)
    saved.gen.manual_seed(5), saved.np_gen.random(3)
    state = object_state(saved, skip=lambda v: False)
    assert "callback" not in state
    fresh = Owner(2)
    module, param, avg = fresh.module, fresh.param, fresh.avg
    load_object_state(fresh, state)
    assert fresh.module is module and fresh.param is param and fresh.avg is avg  # an optimiser keeps its tensors
    assert torch.equal(fresh.module.weight, saved.module.weight) and torch.equal(fresh.param, saved.param)
    assert torch.equal(fresh.avg["w"]["a"], saved.avg["w"]["a"]) and fresh.avg["count"] == 1
    assert fresh.order == [1, 2] and fresh.pair[1] == "x" and torch.equal(fresh.pair[0], saved.pair[0])
    assert np.array_equal(fresh.array, saved.array)
    assert torch.equal(torch.rand(3, generator=fresh.gen), torch.rand(3, generator=saved.gen))
    assert np.array_equal(fresh.np_gen.random(2), saved.np_gen.random(2))


def test_skipped_objects_are_not_saved():
    shared = nn.Linear(2, 2)
    tree = capture({"student": shared, "n": 3}, skip=lambda v: v is shared)
    assert restore({"student": shared, "n": 0}, tree) == {"student": shared, "n": 3}


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_that_would_run_code_is_refused_without_torchs_advice(tmp_path, capsys):
    """torch's message for it says to re-run with weights_only=False: the one advice a user must not follow."""
    ckpt = Checkpointer(tmp_path / "c.pt", 1, {"run_id": "a" * 16, "steps": 5})
    torch.save({"format": 1, "payload": _RunsCode()}, ckpt.path)
    with pytest.warns(UserWarning) as warned:
        assert ckpt.load() is None
    (message,) = [str(w.message) for w in warned]
    assert "unreadable checkpoint ignored" in message and "nothing in it was run" in message
    assert "weights_only" not in message and "False" not in message
    assert "this must never run" not in capsys.readouterr().out
