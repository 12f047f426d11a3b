"""Sweeps: grid expansion, skipping what is recorded, and launching through this process or submitit."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from forgetbench.cli import main
from forgetbench.errors import SpecError
from forgetbench.launchers import RunJob
from forgetbench.records import ResultStore, run_id
from forgetbench.run import run_one
from forgetbench.sweep import expand, parse_grid, plan

from pipeline_helpers import tiny_task

ROOT = Path(__file__).resolve().parent.parent


def test_grid_values_are_read_like_yaml_scalars():
    assert parse_grid(["lam=0.1,1,1e-3", "ldifs.alpha=10", "hard_mining=true,false", "ref_data=mini-world"]) == {
        "lam": (0.1, 1, 0.001), "ldifs.alpha": (10,), "hard_mining": (True, False), "ref_data": ("mini-world",)}


@pytest.mark.parametrize("items, match", [
    (["lam"], "expected key=v1,v2"), (["lam="], "comma-separated list"), (["lam=1,,2"], "comma-separated list"),
    (["=1"], "expected key=v1,v2"), (["lam=1", "lam=2"], "given twice")])
def test_bad_grid_items(items, match):
    with pytest.raises(SpecError, match=match):
        parse_grid(items)


def test_expansion_applies_each_key_to_the_methods_that_declare_it():
    task = tiny_task()
    runs = expand(task, ["ft", "l2sp", "ldifs"], [0, 1], parse_grid(["alpha=0.5,1", "ldifs.alpha=10"]))
    got = sorted((r.method_name, tuple(sorted(r.params.items())), r.seed) for r in runs)
    want = [("ft", (), s) for s in (0, 1)] + [("l2sp", (("alpha", a),), s) for a in (0.5, 1) for s in (0, 1)] \
        + [("ldifs", (("alpha", 10),), s) for s in (0, 1)]  # method.key wins over key
    assert got == sorted(want)
    l2sp = next(r for r in runs if r.method_name == "l2sp" and r.params == {"alpha": 1} and r.seed == 1)
    assert l2sp.run_id == run_id("tiny", 1, "l2sp", {"alpha": 1.0}, 1)  # the id of the resolved parameters


def test_grid_points_that_resolve_alike_are_one_run():
    runs = expand(tiny_task(), ["l2sp"], [0], {"alpha": (1, 1.0)})  # a float parameter: 1 and 1.0 are the same run
    assert len(runs) == 1


@pytest.mark.parametrize("grid, match", [
    ({"beta": (1.0,)}, "no method of this sweep declares 'beta'"),
    ({"ldifs.alpha": (1.0,)}, "method 'ldifs' is not in this sweep"),
    ({"l2sp.beta": (1.0,)}, "method 'l2sp' has no hyper-parameter 'beta'"),
    ({"alpha": ("big",)}, "hyper-parameter 'alpha': expected a number >= 0, got 'big'"),
])
def test_bad_grids_name_the_problem(grid, match):
    with pytest.raises(SpecError, match=match):
        expand(tiny_task(), ["ft", "l2sp"], [0], grid)


def test_requeue_resubmits_the_same_job():
    pytest.importorskip("submitit")
    job = RunJob(task=tiny_task().to_dict(), method="ft", params={}, seed=0, results="r")
    delayed = job.checkpoint()
    assert delayed.function is job and delayed.args == () and delayed.kwargs == {}


def _task_file(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_task(steps=1, drift=()).to_dict()))
    return str(path)


def test_local_sweep_runs_what_is_missing_and_then_nothing(tmp_path, capsys):
    task_file, results = _task_file(tmp_path), tmp_path / "results"
    argv = ["sweep", task_file, "--methods", "ft,l2sp", "--seeds", "0", "--grid", "alpha=0.5,2", "--results",
            str(results)]
    store = ResultStore(results)
    store.append(run_one(tiny_task(steps=1, drift=()), "ft", 0, progress=False))  # one of the three is there
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 runs (2 methods, 1 seeds, grid alpha=0.5,2); 1 already recorded" in out and "launching 2 (local)" in out
    assert sorted((r.method.name, r.method.params.get("alpha")) for r in store.load()) == [
        ("ft", None), ("l2sp", 0.5), ("l2sp", 2.0)]
    before = (results / "tiny.jsonl").read_bytes()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 already recorded" in out and "launching 0" in out
    assert (results / "tiny.jsonl").read_bytes() == before


@pytest.mark.slow  # fresh interpreters: imports dominate
def test_submitit_local_executor_sweep_is_idempotent(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    # the jobs are fresh interpreters: they must find forgetbench and the tiny test datasets
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    task_file, results = _task_file(tmp_path), tmp_path / "results"
    argv = ["sweep", task_file, "--methods", "ft,lp", "--seeds", "0", "--results", str(results),
            "--launcher", "slurm", "--slurm-cluster", "local", "--time", "10", "--wait", "--import", "pipeline_helpers"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "launching 2 (slurm)" in out and out.count(": complete (job ") == 2
    records = ResultStore(results).load()
    assert sorted(r.method.name for r in records) == ["ft", "lp"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 already recorded" in out and "launching 0" in out and "job" not in out
    assert ResultStore(results).load() == records
    todo, done = plan(tiny_task(steps=1), expand(tiny_task(steps=1), ["ft", "lp"], [0]), ResultStore(results))
    assert todo == [] and len(done) == 2
