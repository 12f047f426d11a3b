"""A method author's path: a method file is loaded and checked before any work, and takes a task's parameters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from forgetbench.cli import main
from forgetbench.records import ResultStore

from pipeline_helpers import tiny_task
from test_submit import snapshot

METHOD = (  # a method file a user writes (the README's example, under another name)
    "import torch.nn.functional as F\nfrom forgetbench.methods import Method, Param, register\n\n\n"
    "@register\nclass CosineDistillFile(Method):\n    name = 'cosine-distill-file'\n"
    "    hyperparameters = {'beta': Param(1.0, ge=0)}\n\n    def loss(self, ctx, batch):\n"
    "        cos = F.cosine_similarity(batch.features, batch.frozen_features(ctx))\n"
    "        return self.params['beta'] * (1 - cos).mean()\n")

BROKEN = {
    "syntax-error": ("class Broken(Method)\n    name = 'x'\n", "syntax error"),
    "class-without-name": ("from forgetbench.methods import Method, register\n\n\n@register\nclass NoName(Method):\n"
                           "    pass\n", "NoName needs a non-empty `name`"),
}


def _task_file(tmp_path: Path, **extra) -> Path:
    spec = {**tiny_task(steps=2, drift=("l2",)).to_dict(), **extra}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_bad_method_file_fails_in_one_line_before_any_run(tmp_path, capsys, kind, cache):
    """The issue's case: `--methods ft,bad.py` fine-tuned and recorded ft, then a 24-line traceback, exit 1."""
    text, needle = BROKEN[kind]
    bad = tmp_path / "bad_method.py"
    bad.write_text(text)
    results = tmp_path / "results"
    results.mkdir()
    (results / "other.jsonl").write_text('{"kept": true}\n')
    state = snapshot(results)
    assert main(["run", str(_task_file(tmp_path)), "--methods", f"ft,{bad}", "--results", str(results),
                 "--quiet"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"forgetbench: error: method file {bad}") and needle in err[0]
    assert "Traceback" not in captured.err and "ft seed" not in captured.out  # nothing ran
    assert snapshot(results) == state  # nothing written: no record, no failure log, no checkpoint


def test_a_method_file_takes_the_task_files_parameters(tmp_path, capsys, cache):
    method = tmp_path / "cosine_distill_file.py"
    method.write_text(METHOD)
    task = _task_file(tmp_path, method_params={"cosine-distill-file": {"beta": 0.25}})
    results = tmp_path / "results"
    assert main(["run", str(task), "--methods", str(method), "--results", str(results), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cosine-distill-file seed 0:" in out and str(method) not in out  # named by its registered name
    assert "do not edit" not in out.lower() and "| cosine-distill-file" in out  # this run's table, not the file's
    (record,) = ResultStore(results).load("tiny")
    assert record.method.name == "cosine-distill-file" and record.method.params == {"beta": 0.25}
    undeclared = _task_file(tmp_path, method_params={"cosine-distill-file": {"gamma": 1.0}})
    assert main(["run", str(undeclared), "--methods", str(method), "--results", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "has no hyper-parameter 'gamma'" in err and "beta" in err and not (tmp_path / "r2").exists()


def test_leaderboard_of_another_folder_does_not_overwrite_the_repositorys(tmp_path, monkeypatch, capsys):
    from test_submit import make_record

    monkeypatch.chdir(tmp_path)
    (tmp_path / "leaderboard.md").write_text("the committed one\n")
    runs = tmp_path / "runs"
    ResultStore(runs).append(make_record())
    assert main(["leaderboard", "--results", str(runs)]) == 0
    assert (tmp_path / "leaderboard.md").read_text() == "the committed one\n"
    assert "my-method" in (runs / "leaderboard.md").read_text() and (runs / "leaderboard.html").exists()
