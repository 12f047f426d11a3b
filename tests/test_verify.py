"""The reproducibility tolerance on real reruns, and `forgetbench verify` on a genuine and a forged record."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from forgetbench.cli import main
from forgetbench.evaluate.per_image import accuracy, pack, unpack
from forgetbench.records import ResultStore
from forgetbench.records.agreement import TOLERANCE, agree, disagreements
from forgetbench.run import run_one
from forgetbench.tasks import load_task
from forgetbench.tasks.lookup import ENV_TASKS_PATH

from pipeline_helpers import tiny_task


@pytest.fixture
def tiny(tmp_path, monkeypatch, cache):
    """A registered mini-CLIP task of two steps (a mini task: verify re-runs every record of it)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(yaml.safe_dump(tiny_task(steps=2, drift=("l2", "kernel")).to_dict()))
    monkeypatch.setenv(ENV_TASKS_PATH, str(tasks))
    return load_task("tiny")


def _run(task, threads: int) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        record = run_one(task, "ft", 0, progress=False).to_json()
    finally:
        torch.set_num_threads(before)
    record["provenance"]["git_commit"] = record["provenance"].get("git_commit") or "0" * 40  # a submittable record
    record["provenance"]["git_dirty"] = bool(record["provenance"].get("git_dirty"))
    return record


def _lines(path, *records):
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path


def _forged(record: dict, points: float, images: bool = False) -> dict:
    """The record with its target accuracy raised by ``points`` and its gain with it; with ``images``, also as many
    more test images marked correct, so that it passes validation: consistent, invented."""
    forged = json.loads(json.dumps(record))
    target = forged["metrics"]["target"]
    target["acc"] += points
    target["gain"] = target["acc"] - target["acc_reference"]
    if images:
        correct = unpack(target["correct"]["acc"])
        flip = np.flatnonzero(~correct)[:round(points / 100 * len(correct))]
        correct[flip] = True
        target["correct"]["acc"], target["acc"] = pack(correct), accuracy(pack(correct))
        target["gain"] = target["acc"] - target["acc_reference"]
    return forged


def test_the_tolerance_accepts_a_thread_count_rerun_and_refuses_a_tenth_of_a_point(tiny):
    one, two = _run(tiny, 1), _run(tiny, 2)
    assert agree(one, two), [d.describe() for d in disagreements(one, two)]
    (differ,) = disagreements(_forged(one, 0.1), one)[:1]
    assert differ.field == "metrics.target.acc" and TOLERANCE in differ.describe()


def test_verify_passes_a_genuine_record_and_refuses_a_forged_one(tiny, tmp_path, capsys):
    genuine = _run(tiny, torch.get_num_threads())
    good = _lines(tmp_path / "genuine.jsonl", genuine)
    forged = _lines(tmp_path / "forged.jsonl", _forged(genuine, 1.0, images=True))
    assert main(["verify", str(good), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 agree, 0 disagree, 0 skipped" in out
    assert main(["verify", str(forged), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "0 agree, 1 disagree" in out and "metrics.target.acc: " in out and "(re-run) against" in out

    results = tmp_path / "results"
    assert main(["submit", str(forged), "--verify", "--quiet", "--results", str(results)]) == 2
    assert not results.exists()  # refused: nothing written
    assert main(["submit", str(good), "--verify", "--quiet", "--results", str(results)]) == 0
    assert [r.to_json() for r in ResultStore(results).load("tiny")] == [genuine]
    for _ in range(2):  # the mark survives regeneration
        assert main(["leaderboard", "--results", str(results)]) == 0
        board = (results / "leaderboard.md").read_text()
        assert " 1 ✓ |" in board and "re-run from its record" in board, board


def test_a_method_not_registered_here_is_skipped_not_verified(tiny, tmp_path, capsys):
    record = _run(tiny, torch.get_num_threads())
    record["method"]["name"] = "someone-elses-method"
    from forgetbench.records import run_id

    record["run_id"] = run_id("tiny", record["task"]["version"], "someone-elses-method", record["method"]["params"], 0)
    assert main(["verify", str(_lines(tmp_path / "other.jsonl", record)), "--quiet"]) == 1
    assert "is not registered here" in capsys.readouterr().out
