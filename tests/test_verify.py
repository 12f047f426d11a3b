"""The reproducibility tolerance on real reruns, and `forgetbench verify` on a genuine and a forged record."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import yaml

from forgetbench import methods
from forgetbench.cli import main
from forgetbench.evaluate.per_image import accuracy, pack, unpack
from forgetbench.records import ResultStore
from forgetbench.records.agreement import TOLERANCE, agree, disagreements
from forgetbench.run import run_one
from forgetbench.tasks import load_task
from forgetbench.tasks.lookup import ENV_TASKS_PATH

from pipeline_helpers import tiny_task
from test_method_files import METHOD


@pytest.fixture
def tiny(tmp_path, monkeypatch, cache):
    """A registered mini-CLIP task of two steps (a mini task: verify re-runs every record of it)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(yaml.safe_dump(tiny_task(steps=2, drift=("l2", "kernel")).to_dict()))
    monkeypatch.setenv(ENV_TASKS_PATH, str(tasks))
    return load_task("tiny")


def _run(task, threads: int, method: str = "ft") -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        record = run_one(task, method, 0, progress=False).to_json()
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


# The README's example method, noting every file it is run from: a verifier must run it only when asked, and only from
# the bytes the record names.
NOTED = METHOD.replace("import torch.nn.functional as F\n", "import os\n\nimport torch.nn.functional as F\n\n"
                       "with open(os.environ['METHOD_IMPORTED'], 'a') as f:\n    f.write(__file__ + '\\n')\n", 1)


@pytest.fixture
def forget_methods(monkeypatch):
    """Call it to forget the methods files registered in this process (an author's and a verifier's processes are
    two); the registry is restored after the test."""
    methods.METHODS.names()
    earlier = {name for names in methods._FILE_METHODS.values() for name in names}  # other tests' method files
    shipped = {k: v for k, v in methods.METHODS._items.items() if k not in earlier}
    monkeypatch.setattr(methods.METHODS, "_items", dict(shipped))
    monkeypatch.setattr(methods, "_FILE_METHODS", {})

    def forget():
        methods.METHODS._items.clear()
        methods.METHODS._items.update(shipped)
        methods._FILE_METHODS.clear()
    return forget


def test_a_file_method_is_re_run_from_its_stored_source_only_with_allow_code(tiny, tmp_path, capsys, monkeypatch,
                                                                              forget_methods):
    author = tmp_path / "cosine_distill_file.py"
    author.write_text(NOTED)
    imported = tmp_path / "imported.txt"
    monkeypatch.setenv("METHOD_IMPORTED", str(imported))
    record = _run(tiny, torch.get_num_threads(), method=str(author))
    forget_methods()
    imported.unlink()
    sub, results = _lines(tmp_path / "sub.jsonl", record), tmp_path / "results"
    assert main(["submit", str(sub), "--method-source", str(author), "--results", str(results)]) == 0
    stored = results / "method-sources" / f"{record['method']['source_sha256']}.py"
    assert stored.read_bytes() == author.read_bytes() and not imported.exists()
    verify = ["verify", str(sub), "--results", str(results), "--quiet"]

    assert main(verify) == 1  # off by default: skipped, saying how to allow it
    out = capsys.readouterr().out
    assert "0 agree, 0 disagree, 1 skipped" in out and f"its source is {stored}: add --allow-code" in out
    assert not imported.exists()

    assert main(verify + ["--allow-code"]) == 0
    out = capsys.readouterr().out
    assert "1 agree, 0 disagree, 0 skipped" in out and "other code" not in out
    assert imported.read_text() == f"{stored}\n"  # run once, from the stored bytes

    forget_methods()
    imported.unlink()
    tampered = stored.read_bytes() + b"\nprint('changed after it was stored')\n"
    stored.write_bytes(tampered)
    assert main(verify + ["--allow-code"]) == 1
    out = capsys.readouterr().out
    assert "1 skipped" in out and f"{stored}: refused, not loaded: its bytes hash to " \
                                  f"{hashlib.sha256(tampered).hexdigest()}, not to the {stored.stem}" in out
    assert not imported.exists()  # refused before it was imported


def test_a_re_run_with_other_code_of_the_method_says_so(tiny, tmp_path, capsys, monkeypatch, forget_methods):
    """The verifier's copy of the method changed since the record (here a comment): the outcome names the code."""
    author, copy = tmp_path / "cosine_distill_file.py", tmp_path / "verifiers_copy.py"
    author.write_text(NOTED)
    copy.write_text(NOTED + "# edited since\n")
    monkeypatch.setenv("METHOD_IMPORTED", str(tmp_path / "imported.txt"))
    record = _run(tiny, torch.get_num_threads(), method=str(author))
    forget_methods()
    sub = _lines(tmp_path / "sub.jsonl", record)
    assert main(["verify", str(sub), "--method-file", str(copy), "--quiet"]) == 0  # the numbers agree
    out = capsys.readouterr().out
    old, new = record["method"]["source_sha256"], hashlib.sha256(copy.read_bytes()).hexdigest()
    assert f"agrees (made with other code of cosine-distill-file (sha256 {old[:12]}… in the record vs " \
           f"{new[:12]}… here))" in out
