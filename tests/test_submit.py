"""Submissions: validation of result files, all-or-nothing merges, and refusal of anything that is not plain data."""
from __future__ import annotations

import base64
import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from forgetbench.cli import main
from forgetbench.records import ResultStore, record_problems, run_id
from forgetbench.submit import SubmissionError, check_submission, submit
from forgetbench.tasks import load_task

from pipeline_helpers import summary_of

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_record(seed=0, method="my-method", params=None, task="mini-shapes", version=None):
    """A complete, consistent record of a known task (numbers invented, structure real)."""
    spec = load_task(task)
    version = spec.version if version is None else version
    params = {"beta": 1.0} if params is None else params
    heldout = {}
    for i, name in enumerate(spec.evaluate.datasets):
        lp_ref, zs_ref = 60.0 + i, 50.0 + i
        lp, zs = lp_ref - 1.5 * i - 0.25 * seed, zs_ref - 2.0 * i
        heldout[name] = {"lp": lp, "lp_reference": lp_ref, "delta_lp": lp - lp_ref,
                         "zs": zs, "zs_reference": zs_ref, "delta_zs": zs - zs_ref,
                         "drift": {"l2": 0.1 * i, "kernel": 0.05 * i, "otdd": 0.2 * i}}
    return {
        "schema": "forgetbench.result/1", "run_id": run_id(spec.name, version, method, params, seed),
        "status": "complete",
        "task": {"name": spec.name, "version": version, "spec": spec.to_dict()},
        "method": {"name": method, "params": params, "reference": "https://example.org/my-paper", "state": {}},
        "seed": seed, "model": {"name": spec.model, "weights_sha256": "ab" * 32},
        "metrics": {"target": {"dataset": spec.finetune.dataset, "acc": 70.0, "acc_reference": 52.5, "gain": 17.5},
                    "heldout": heldout, "summary": summary_of(heldout, weight_drift=0.04)},
        "training": {"steps": 64, "final_loss": 0.5, "head_init": "zeroshot"},
        "timings": {"setup_s": 1.0, "finetune_s": 10.0, "evaluate_s": 5.0, "total_s": 16.0},
        "provenance": {"git_commit": COMMIT, "git_dirty": False, "device": "cpu", "seed": seed,
                       "timestamp_utc": "2026-01-01T00:00:00+00:00",
                       "versions": {"python": "3.11.7", "forgetbench": "0.1.0", "torch": "2.14.1"},
                       "hardware": {"platform": "Linux-x86_64", "machine": "x86_64", "cpu_count": 2}},
    }


def write_lines(path: Path, records, raw_lines=()) -> Path:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records) + "".join(raw_lines)
    path.write_text(text)
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) with its bytes: the results folder, exactly."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def results(tmp_path):
    """A results folder holding one stored run."""
    root = tmp_path / "results"
    ResultStore(root).append(make_record(seed=0))
    return root


def test_template_record_is_a_valid_submission():
    assert record_problems(make_record(), submission=True) == []


def test_valid_submission_merges_and_resubmitting_changes_nothing(tmp_path, results):
    before = (results / "mini-shapes.jsonl").read_bytes()
    new = [make_record(seed=1), make_record(seed=2), make_record(seed=0, task="mini-shapes-trajectory")]
    sub = write_lines(tmp_path / "sub.jsonl", [make_record(seed=0)] + new)  # seed 0 is already stored, identically
    result = submit(sub, results)
    assert result.added == {results / "mini-shapes.jsonl": 2, results / "mini-shapes-trajectory.jsonl": 1}
    assert result.already_stored == [make_record(seed=0)["run_id"]]
    after = (results / "mini-shapes.jsonl").read_bytes()
    assert after.startswith(before)  # appended: the stored lines are untouched
    store = ResultStore(results)
    assert [r.to_json() for r in store.load("mini-shapes")] == [make_record(seed=i) for i in range(3)]
    assert [r.to_json() for r in store.load("mini-shapes-trajectory")] == [new[2]]
    state = snapshot(results)
    again = submit(sub, results)  # every run is stored now: nothing is added, nothing duplicated
    assert again.added == {} and len(again.already_stored) == 4
    assert snapshot(results) == state
    assert not list(results.glob(".*"))  # no temporary file left


def _set(rec, path, value):
    parent = rec
    for k in path[:-1]:
        parent = parent[k]
    if value is KeyError:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


def _reid(rec):
    rec["run_id"] = run_id(rec["task"]["name"], rec["task"]["version"], rec["method"]["name"], rec["method"]["params"],
                           rec["seed"])
    return rec


def bad_schema(r):
    r["schema"] = "forgetbench.result/0"


SHAPES_VERSION = load_task("mini-shapes").version  # the tests follow the task's version bumps


def unknown_task_version(r):
    r["task"]["version"] += 1
    r["task"]["spec"]["version"] += 1
    _reid(r)


def unknown_task(r):
    r["task"]["name"] = r["task"]["spec"]["name"] = "mini-nonexistent"
    _reid(r)


def other_protocol(r):
    r["task"]["spec"]["train"]["lr"] = 0.01  # claims the task's name and version but trained differently


def missing_commit(r):
    del r["provenance"]["git_commit"]


def missing_versions(r):
    del r["provenance"]["versions"]


def missing_hardware(r):
    r["provenance"]["hardware"] = {}


def wrong_provenance_seed(r):
    r["provenance"]["seed"] = 5


def delta_not_its_parts(r):
    r["metrics"]["heldout"]["mini/colours"]["delta_lp"] += 0.5


def summary_not_its_parts(r):
    r["metrics"]["summary"]["delta_lp_mean"] += 0.01


def gain_not_its_parts(r):
    r["metrics"]["target"]["gain"] = 3.0


def reference_not_the_better_head(r):  # the gain is measured against max(zero-shot, linear probe)
    r["metrics"]["target"].update(zs_reference=52.5, lp_reference=60.0)


def accuracy_out_of_range(r):
    r["metrics"]["heldout"]["mini/colours"].update(lp=101.0, delta_lp=101.0 - 60.0)


def negative_drift(r):
    r["metrics"]["heldout"]["mini/colours"]["drift"]["l2"] = -0.5


def unknown_field(r):
    r["extra"] = {"note": "hi"}


def wrong_datasets(r):
    r["metrics"]["heldout"].pop("mini/digits")
    r["metrics"]["summary"] = summary_of(r["metrics"]["heldout"], weight_drift=0.04)


@pytest.mark.parametrize("corrupt, field, needle", [
    (bad_schema, "schema", "expected one of 'forgetbench.result/1'"),
    (unknown_task_version, "task.version",
     f"is {SHAPES_VERSION + 1} but task 'mini-shapes' is at version {SHAPES_VERSION}"),
    (unknown_task, "task.name", "is not a known task"),
    (other_protocol, "task.spec.train", "differs from the protocol"),
    (missing_commit, "provenance.git_commit", "expected the 40-hex commit"),
    (missing_versions, "provenance.versions", "missing required field"),
    (missing_hardware, "provenance.hardware.platform", "missing required field"),
    (wrong_provenance_seed, "provenance.seed", "but the record's seed is 3"),
    (delta_not_its_parts, "metrics.heldout.mini/colours.delta_lp", "but lp - lp_reference ="),
    (summary_not_its_parts, "metrics.summary.delta_lp_mean", "but the held-out datasets give"),
    (gain_not_its_parts, "metrics.target.gain", "but acc - acc_reference = 17.5"),
    (reference_not_the_better_head, "metrics.target.acc_reference",
     "is 52.5 but max(zs_reference, lp_reference) = 60.0"),
    (accuracy_out_of_range, "metrics.heldout.mini/colours.lp", "expected a number in [0, 100]"),
    (negative_drift, "metrics.heldout.mini/colours.drift.l2", "expected a number in [-1e-06, 4.0]"),
    (unknown_field, "extra", "is not a field of forgetbench.result/1"),
    (wrong_datasets, "metrics.heldout", "but the task evaluates"),
])
def test_each_invalid_record_is_refused_and_results_untouched(tmp_path, results, capsys, corrupt, field, needle):
    bad = make_record(seed=3)
    corrupt(bad)
    sub = write_lines(tmp_path / "sub.jsonl", [make_record(seed=1), bad])
    state = snapshot(results)
    with pytest.raises(SubmissionError) as err:
        submit(sub, results)
    lines = [str(p) for p in err.value.problems]
    assert any(line.startswith(f"{sub}:2: {field}: ") and needle in line for line in lines), lines
    assert snapshot(results) == state  # byte-identical: the good record on line 1 was not merged either
    assert main(["submit", str(sub), "--results", str(results)]) == 2
    stderr = capsys.readouterr().err
    assert f"{sub}:2: {field}: " in stderr and "is unchanged" in stderr
    assert snapshot(results) == state


def test_duplicates_within_the_file_and_against_stored_runs(tmp_path, results):
    state = snapshot(results)
    sub = write_lines(tmp_path / "dup.jsonl", [make_record(seed=1), make_record(seed=2), make_record(seed=1)])
    with pytest.raises(SubmissionError, match=re.escape(f"{sub}:3: run_id: ") + ".* is also on line 1"):
        submit(sub, results)
    other = make_record(seed=0)  # the stored run, with other numbers
    other["metrics"]["target"].update(acc=71.0, gain=71.0 - 52.5)
    sub = write_lines(tmp_path / "clash.jsonl", [other])
    with pytest.raises(SubmissionError, match=re.escape(f"{sub}:1: metrics.target.acc: ") + ".*already recorded in .*"
                                              r"mini-shapes\.jsonl:1 and the two disagree: metrics\.target\.acc: 71\.0 "
                                              r"\(submitted\) against 70\.0 \(recorded\); tolerance \|a - b\| <= "):
        submit(sub, results)
    assert snapshot(results) == state


def _nudged(rec: dict, field: tuple, by: float) -> dict:
    """The record with one number moved (relative ``by``) and its consistent summary kept as is."""
    rec = json.loads(json.dumps(rec))
    parent = rec
    for k in field[:-1]:
        parent = parent[k]
    parent[field[-1]] *= 1 + by
    return rec


def test_a_rerun_within_the_tolerance_is_the_same_run_and_a_point_is_not(tmp_path, results):
    """The README's flow: a record of a run already stored, from a rerun on another thread count (drift values move
    by up to 4.6e-6 relative, bench/reproducibility_noise.py), is "already stored", not a conflict; 0.1 point is refused,
    naming the field, both values and the tolerance."""
    from forgetbench.records.agreement import TOLERANCE

    second = list(make_record(seed=0)["metrics"]["heldout"])[1]  # a dataset whose drift is not 0
    rerun = _nudged(make_record(seed=0), ("metrics", "heldout", second, "drift", "otdd"), 4.6e-6)
    assert rerun != make_record(seed=0)
    result = submit(write_lines(tmp_path / "rerun.jsonl", [rerun, make_record(seed=1)]), results)
    assert result.already_stored == [rerun["run_id"]] and sum(result.added.values()) == 1
    changed = make_record(seed=0)
    changed["metrics"]["target"].update(acc=70.1, gain=70.1 - 52.5)  # consistent, 0.1 point more
    sub = write_lines(tmp_path / "changed.jsonl", [changed])
    state = snapshot(results)
    with pytest.raises(SubmissionError) as refused:
        submit(sub, results)
    message = str(refused.value.problems[0])
    assert "metrics.target.acc: 70.1 (submitted) against 70.0 (recorded)" in message and TOLERANCE in message
    assert snapshot(results) == state


def _submit_in_process(sub: str, results: str, barrier, codes) -> None:
    barrier.wait()  # every process checks and merges at the same moment
    codes.put(main(["submit", sub, "--results", results]))


def test_the_same_file_submitted_by_several_processes_at_once(tmp_path, results):
    """Each process gets the same exit code (0: the runs are stored once, whoever stored them), nothing is lost or
    duplicated."""
    import multiprocessing as mp

    sub = write_lines(tmp_path / "sub.jsonl", [make_record(seed=s) for s in range(1, 5)])
    ctx = mp.get_context("fork")
    n = 4
    barrier, codes = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_submit_in_process, args=(str(sub), str(results), barrier, codes)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [codes.get(timeout=5) for _ in range(n)] == [0] * n
    stored = [r.to_json() for r in ResultStore(results).load("mini-shapes")]
    assert stored == [make_record(seed=s) for s in range(5)]  # each run once, in order, none lost


def test_truncated_json_is_refused(tmp_path, results):
    state = snapshot(results)
    good = json.dumps(make_record(seed=1))
    sub = tmp_path / "cut.jsonl"
    sub.write_text(good + "\n" + json.dumps(make_record(seed=2))[:-40])  # a download cut short
    with pytest.raises(SubmissionError, match=re.escape(f"{sub}:2: line: truncated JSON")):
        submit(sub, results)
    sub.write_text(json.dumps(make_record(seed=2))[:300] + "\n" + good + "\n")  # a crashed writer's partial line
    with pytest.raises(SubmissionError, match=re.escape(f"{sub}:1: line: truncated JSON")):
        submit(sub, results)
    assert snapshot(results) == state


def test_not_json_objects_nan_and_duplicate_keys_are_refused(tmp_path):
    rec = json.dumps(make_record(seed=1))
    sub = tmp_path / "odd.jsonl"
    sub.write_text("\n".join([
        "[1, 2]",
        rec.replace('"seed": 1,', '"seed": NaN,', 1),
        rec[:-1] + ', "seed": 1}',
        "",
        "   ",
    ]) + "\n")
    problems = [str(p) for p in check_submission(sub).problems]
    assert problems[0] == f"{sub}:1: line: is a JSON list, not an object (one record per line)"
    assert problems[1].startswith(f"{sub}:2: line: not valid JSON: NaN is not JSON data")
    assert problems[2].startswith(f"{sub}:3: line: not valid JSON: key 'seed' appears twice")
    assert len(problems) == 3
    sub.write_text("")
    assert [str(p) for p in check_submission(sub).problems] == [f"{sub}: file: has no records (expected one JSON "
                                                                 "object per line)"]


def test_every_problem_is_reported_with_its_line(tmp_path):
    a, b = make_record(seed=1), make_record(seed=2)
    delta_not_its_parts(a)
    missing_commit(b)
    bad_schema(b)
    sub = write_lines(tmp_path / "sub.jsonl", [make_record(seed=4), a, b])
    problems = [(p.line, p.where) for p in check_submission(sub).problems]
    assert problems == [(2, "metrics.heldout.mini/colours.delta_lp"), (3, "schema"), (3, "provenance.git_commit")]


class _Payload:
    """Unpickling this would create a file: proof of whether anything was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payload_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    files = {}
    files["binary pickle"] = tmp_path / "a.jsonl"
    files["binary pickle"].write_bytes(pickle.dumps([make_record(seed=1), _Payload(marker)]))
    files["torch.save zip"] = tmp_path / "b.jsonl"
    torch.save({"records": [make_record(seed=1)], "x": _Payload(marker)}, files["torch.save zip"])
    files["text pickle"] = tmp_path / "c.jsonl"
    files["text pickle"].write_bytes(pickle.dumps(_Payload(marker), protocol=0))
    files["python code"] = tmp_path / "d.jsonl"
    files["python code"].write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    rec = make_record(seed=1)
    rec["method"]["params"] = {"blob": base64.b64encode(pickle.dumps(_Payload(marker))).decode()}
    files["base64 pickle in a string"] = write_lines(tmp_path / "e.jsonl", [_reid(rec)])
    rec = make_record(seed=1)
    rec["method"]["state"] = {"py/reduce": [{"py/function": "pathlib.Path.touch"}, {"py/tuple": [str(marker)]}]}
    files["jsonpickle tags"] = write_lines(tmp_path / "f.jsonl", [rec])
    rec = make_record(seed=1)
    rec["method"]["reference"] = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    files["code in a string"] = write_lines(tmp_path / "g.jsonl", [rec])
    return files


def test_pickle_and_code_payloads_are_refused_unexecuted(tmp_path, results):
    marker = tmp_path / "executed"
    state = snapshot(results)
    expected = {"binary pickle": "1: file: is a binary pickle", "torch.save zip": "1: file: is a zip archive",
                "text pickle": "1: file: is a text (protocol 0) pickle", "python code": "1: line: not valid JSON",
                "base64 pickle in a string": "1: method.params.blob: carries a binary pickle, base64-encoded",
                "jsonpickle tags": "1: method.state.py/reduce: carries a serialiser tag",
                "code in a string": "1: method.reference: carries code"}
    for kind, path in _payload_files(tmp_path, marker).items():
        with pytest.raises(SubmissionError) as err:
            submit(path, results)
        assert f"{path}:{expected[kind]}" in str(err.value), (kind, str(err.value))
        if kind == "python code":
            assert "looks like Python code" in str(err.value)
        assert not marker.exists(), f"{kind}: the payload ran"
    assert snapshot(results) == state


def test_cli_validate_results(tmp_path, capsys):
    good = write_lines(tmp_path / "good.jsonl", [make_record(seed=1), make_record(seed=2)])
    assert main(["validate-results", str(good)]) == 0
    assert f"ok, 2 new record(s) (mini-shapes v{SHAPES_VERSION}: 2)" in capsys.readouterr().out
    bad = make_record(seed=3)
    delta_not_its_parts(bad)
    bad_file = write_lines(tmp_path / "bad.jsonl", [make_record(seed=1), bad])
    assert main(["validate-results", str(good), str(bad_file)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad_file}:2: metrics.heldout.mini/colours.delta_lp: is ")
    assert err[-1] == f"forgetbench: error: {bad_file}: 1 problem(s)"


def test_committed_results_are_valid_submissions(capsys):
    files = sorted(str(p) for p in (ROOT / "results").glob("*.jsonl"))
    assert files
    assert main(["validate-results", *files]) == 0, capsys.readouterr().err


def test_merge_keeps_a_crashed_writers_partial_line(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    partial = json.dumps(make_record(seed=0))[:200]
    (root / "mini-shapes.jsonl").write_text(partial)  # no newline: a writer died mid-line
    submit(write_lines(tmp_path / "sub.jsonl", [make_record(seed=1)]), root)
    lines = (root / "mini-shapes.jsonl").read_text().split("\n")
    assert lines[0] == partial and json.loads(lines[1]) == make_record(seed=1) and lines[2] == ""


def test_refused_submission_to_a_missing_folder_creates_nothing(tmp_path):
    root = tmp_path / "nowhere"
    bad = make_record(seed=1)
    bad_schema(bad)
    with pytest.raises(SubmissionError):
        submit(write_lines(tmp_path / "sub.jsonl", [bad]), root)
    assert not root.exists()
