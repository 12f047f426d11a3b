"""Result records, the JSONL store (incl. concurrent writers) and provenance."""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import statistics

import pytest

from forgetbench import provenance
from forgetbench.errors import SpecError
from forgetbench.records import HeldoutMetrics, ResultStore, parse_record, run_id, summarize_heldout

from pipeline_helpers import RESULT_SCHEMA, summary_of


def make_record(task="mini-shapes", version=1, method="l2sp", params=None, seed=0, heldout=None, acc=90.0):
    params = {"alpha": 0.5} if params is None else params
    if heldout is None:
        heldout = {"mini/colours": {"lp": 88.0, "lp_reference": 90.0, "delta_lp": -2.0}}
    return {
        "schema": RESULT_SCHEMA,
        "run_id": run_id(task, version, method, params, seed),
        "status": "complete",
        "task": {"name": task, "version": version, "spec": {}},
        "method": {"name": method, "params": params, "reference": "Li et al., ICML 2018"},
        "seed": seed,
        "model": {"name": "mini-clip", "weights_sha256": "0" * 64},
        "metrics": {"target": {"dataset": "mini/shapes", "acc": acc, "acc_reference": 70.0, "gain": acc - 70.0},
                    "heldout": heldout, "summary": summary_of(heldout)},
        "timings": {"finetune_s": 1.0, "evaluate_s": 1.0, "total_s": 2.0},
        "provenance": {},
    }


# ----------------------------------------------------------------------------------------------------- run id

def test_run_id_matches_independent_hash_and_is_stable():
    ident = {"method": "l2sp", "params": {"b": 2, "a": 0.5}, "seed": 3, "task": "t", "task_version": 1}
    expected = hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert run_id("t", 1, "l2sp", {"b": 2, "a": 0.5}, 3) == expected
    assert run_id("t", 1, "l2sp", {"a": 0.5, "b": 2}, 3) == expected  # key order does not matter


@pytest.mark.parametrize("change", [
    dict(task="u"), dict(task_version=2), dict(method="ft"), dict(params={"a": 0.6}), dict(params={"a": 0.5, "c": 1}),
    dict(seed=1)])
def test_run_id_sensitive_to_each_field(change):
    base = dict(task="t", task_version=1, method="l2sp", params={"a": 0.5}, seed=0)
    assert run_id(**{**base, **change}) != run_id(**base)


def test_run_id_refuses_nan_params():
    with pytest.raises(SpecError, match="not plain finite JSON"):
        run_id("t", 1, "m", {"a": math.nan}, 0)


# ---------------------------------------------------------------------------------------------------- summary

def test_summary_matches_hand_computation():
    heldout = {
        "a": {"lp": 80.0, "lp_reference": 81.5, "delta_lp": -1.5, "zs": 60.0, "zs_reference": 64.0, "delta_zs": -4.0,
              "drift": {"l2": 0.2, "otdd": 1.0}},
        "b": {"lp": 70.0, "lp_reference": 73.25, "delta_lp": -3.25, "drift": {"l2": 0.4, "kernel": 0.1}},
        "c": {"lp": 90.0, "lp_reference": 89.5, "delta_lp": 0.5, "zs": 50.0, "zs_reference": 49.0, "delta_zs": 1.0},
    }
    s = summarize_heldout({k: HeldoutMetrics(**m) for k, m in heldout.items()}, weight_drift=3.0)
    assert s["delta_lp_mean"] == pytest.approx(statistics.mean([-1.5, -3.25, 0.5]))
    assert s["delta_lp_worst"] == -3.25
    assert s["delta_zs_mean"] == pytest.approx(statistics.mean([-4.0, 1.0]))  # only datasets with ZS
    assert s["delta_zs_worst"] == -4.0
    assert s["drift_l2_mean"] == pytest.approx(0.3)
    assert s["drift_otdd_mean"] == pytest.approx(1.0)
    assert s["drift_kernel_mean"] == pytest.approx(0.1)
    assert s["weight_drift"] == 3.0
    assert set(summary_of({"a": {"lp": 1.0, "lp_reference": 2.0, "delta_lp": -1.0}})) == {
        "delta_lp_mean", "delta_lp_worst"}


# ------------------------------------------------------------------------------------------------- validation

def test_validate_accepts_good_record_and_reads_it_typed():
    record = parse_record(make_record())
    assert record.metrics.target.acc == 90.0 and record.method.citation == "Li et al., ICML 2018"
    assert record.to_json() == make_record()  # read and written back, the same JSON


@pytest.mark.parametrize("path, value, match", [
    (("run_id",), None, "run_id: missing required field"),
    (("metrics", "target", "acc"), None, "metrics.target.acc: missing required field"),
    (("metrics", "heldout", "mini/colours", "delta_lp"), None,
     "metrics.heldout.mini/colours.delta_lp: missing required field"),
    (("metrics", "target", "acc"), "91", "metrics.target.acc: expected a number in"),
    (("metrics", "target", "acc"), 0.0 + 120, r"metrics.target.acc: expected a number in \[0, 100\]"),
    (("timings", "total_s"), math.inf, r"timings.total_s: expected a number >= 0 \(seconds\), got inf \(not finite\)"),
    (("task", "version"), True, "task.version: expected an integer >= 1, got true"),
    (("status",), "failed", "status: expected 'complete'"),
    (("seed",), 1, "run_id: .* does not match"),
    (("schema",), "other/1", "schema: expected one of"),
])
def test_validate_names_the_bad_field(path, value, match):
    rec = make_record()
    parent = rec
    for k in path[:-1]:
        parent = parent[k]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    with pytest.raises(SpecError, match=match):
        parse_record(rec)


def test_validate_zero_shot_keys_come_together():
    rec = make_record()
    rec["metrics"]["heldout"]["mini/colours"]["zs"] = 50.0
    with pytest.raises(SpecError, match="zs_reference: missing required field"):
        parse_record(rec)


def test_unknown_keys_are_kept_so_newer_records_stay_readable():
    rec = make_record()
    rec["metrics"]["heldout"]["mini/colours"]["lp_val"] = 91.0  # a field a later version adds
    rec["future"] = {"x": 1}
    record = parse_record(rec)
    assert record.to_json() == rec and record.extra == {"future": {"x": 1}}


# ------------------------------------------------------------------------------------------------------ store

def test_append_load_roundtrip_duplicate_and_tasks(tmp_path):
    store = ResultStore(tmp_path / "results")
    a, b = make_record(seed=0), make_record(seed=1)
    c = make_record(task="mini-colours", seed=0)
    assert store.append(a) and store.append(b) and store.append(c)
    assert [r.to_json() for r in store.load("mini-shapes")] == [a, b]
    assert [r.to_json() for r in store.load()] == [c, a, b]  # files in task-name order
    assert store.tasks() == ["mini-colours", "mini-shapes"]
    assert store.has(a["run_id"]) and store.has(c["run_id"], task="mini-colours")
    assert not store.has(make_record(seed=9)["run_id"])
    before = (tmp_path / "results" / "mini-shapes.jsonl").read_bytes()
    dup = make_record(seed=0, acc=10.0)  # the same run, other numbers (gain follows acc)
    assert store.append(dup) is False
    assert (tmp_path / "results" / "mini-shapes.jsonl").read_bytes() == before


def test_replace_swaps_the_record(tmp_path):
    store = ResultStore(tmp_path)
    a, b = make_record(seed=0), make_record(seed=1)
    store.append(a)
    store.append(b)
    new_a = make_record(seed=0, acc=42.0)
    assert store.append(new_a, replace=True) is True
    loaded = [r.to_json() for r in store.load("mini-shapes")]
    assert len(loaded) == 2 and b in loaded and new_a in loaded and a not in loaded
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_nan_refused_and_file_unchanged(tmp_path):
    store = ResultStore(tmp_path)
    store.append(make_record(seed=0))
    path = tmp_path / "mini-shapes.jsonl"
    before = path.read_bytes()
    bad = make_record(seed=1)
    bad["metrics"]["target"]["acc"] = math.nan
    with pytest.raises(SpecError, match="finite"):
        store.append(bad)
    bad = make_record(seed=2)
    bad["task"]["spec"]["lr"] = math.inf  # outside the validated fields: caught at serialisation
    with pytest.raises(SpecError, match="NaN or infinite"):
        store.append(bad)
    assert path.read_bytes() == before


def test_corrupt_lines_skipped_with_warning(tmp_path):
    store = ResultStore(tmp_path)
    a, b = make_record(seed=0), make_record(seed=1)
    path = tmp_path / "mini-shapes.jsonl"
    line_b = json.dumps(b)
    path.write_text(json.dumps(a) + "\n" + "garbage{{\n" + line_b + "\n" + line_b[: len(line_b) // 2])
    with pytest.warns(UserWarning) as caught:
        loaded = [r.to_json() for r in store.load()]
    assert loaded == [a, b]
    messages = [str(w.message) for w in caught]
    assert any("mini-shapes.jsonl:2" in m for m in messages)
    assert any("mini-shapes.jsonl:4" in m for m in messages)
    # an append after a truncated line starts a fresh line instead of gluing onto the fragment
    c = make_record(seed=2)
    assert store.append(c)
    with pytest.warns(UserWarning):
        assert [r.to_json() for r in store.load()] == [a, b, c]


def _append_many(root: str, worker: int, n: int) -> None:
    store = ResultStore(root)
    for i in range(n):
        store.append(make_record(seed=worker * 1000 + i))


def _replace_many(root: str, n: int) -> None:
    store = ResultStore(root)
    for i in range(n):
        rec = make_record(seed=999_999, acc=float(i))
        store.append(rec, replace=True)


def _ctx():
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def test_concurrent_appends_lose_nothing(tmp_path):
    ctx = _ctx()
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 50)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    lines = (tmp_path / "mini-shapes.jsonl").read_text().splitlines()
    assert len(lines) == 400
    seeds = sorted(json.loads(line)["seed"] for line in lines)
    assert seeds == sorted(w * 1000 + i for w in range(8) for i in range(50))


def test_replace_concurrent_with_appends_loses_nothing(tmp_path):
    ctx = _ctx()
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 30)) for w in range(2)]
    procs.append(ctx.Process(target=_replace_many, args=(str(tmp_path), 20)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    recs = ResultStore(tmp_path).load()
    assert len(recs) == 61
    assert sorted(r.seed for r in recs) == sorted([w * 1000 + i for w in range(2) for i in range(30)] + [999_999])
    assert [r.metrics.target.acc for r in recs if r.seed == 999_999] == [19.0]


def test_failures_go_to_their_own_file(tmp_path):
    store = ResultStore(tmp_path)
    info = {"task": "mini-shapes", "task_version": 1, "method": "ft", "params": {}, "seed": 0, "loss": math.nan}
    store.write_failure(info, "DivergenceError: loss is nan")
    assert store.load() == [] and store.tasks() == []
    (fail,) = store.failures()
    assert fail["status"] == "failed" and fail["reason"].startswith("DivergenceError")
    assert fail["run_id"] == run_id("mini-shapes", 1, "ft", {}, 0)
    assert fail["run"]["loss"] == "nan"
    assert not store.has(fail["run_id"])


def test_bad_task_name_refused(tmp_path):
    with pytest.raises(SpecError, match="invalid task name"):
        ResultStore(tmp_path).path("../escape")
    with pytest.raises(SpecError, match="not 'failures'"):
        ResultStore(tmp_path).path("failures")


# ------------------------------------------------------------------------------------------------- provenance

def test_provenance_keys_and_types():
    p = provenance.collect(seed=7)
    assert p["seed"] == 7
    assert p["git_commit"] is None or (isinstance(p["git_commit"], str) and len(p["git_commit"]) == 40)
    assert p["git_dirty"] is None or isinstance(p["git_dirty"], bool)
    assert set(p["versions"]) == {"python", "forgetbench", "torch", "torchvision", "open_clip_torch", "timm",
                                  "numpy", "scikit-learn", "pot", "pandas"}
    assert all(v is None or isinstance(v, str) for v in p["versions"].values())
    assert isinstance(p["versions"]["numpy"], str)
    hw = p["hardware"]
    assert isinstance(hw["cpu_count"], int) and isinstance(hw["platform"], str)
    assert "hostname" not in json.dumps(p) and "node" not in p["hardware"]
    assert p["timestamp_utc"].endswith("+00:00")
    json.dumps(p, allow_nan=False)  # must be storable as-is


def test_git_info_outside_a_repository(tmp_path):
    assert provenance.git_info(tmp_path) == {"git_commit": None, "git_dirty": None}
