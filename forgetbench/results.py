"""Result records: the schema, the run id, the held-out summary and an append-only store safe for many writers.

A run is (task name, task version, method name, resolved method params, seed); it produces one JSON record,
stored as one line of ``<root>/<task-name>.jsonl``. Accuracies are percentages (0..100), deltas are points.
This module is the single place that knows the record schema (``validate_record``).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import SpecError

RESULT_SCHEMA = "forgetbench.result/1"
FAILURE_SCHEMA = "forgetbench.failure/1"
SEQUENCE_SCHEMA = "forgetbench.sequence/1"  # a continual fine-tuning run: accuracy matrices (forgetbench/sequence.py)
FAILURES_FILE = "failures.jsonl"

_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RUN_ID = re.compile(r"[0-9a-f]{16}")
_DRIFTS = ("l2", "otdd", "kernel")


# --------------------------------------------------------------------------------------------- run id + summary

def _canonical(obj: Any, what: str) -> str:
    """Canonical JSON (sorted keys, no spaces, finite numbers only) so equal runs hash equally."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{what} is not plain finite JSON ({e}); use str/int/float/bool/None, lists and dicts") from None


def run_id(task: str, task_version: int, method: str, params: Mapping[str, Any], seed: int) -> str:
    """16 hex chars of sha256 over the canonical JSON of the run's identity.

    ``params`` must be the *resolved* parameters: ``{"alpha": 1}`` and ``{"alpha": 1.0}`` are different runs.
    """
    ident = {"task": task, "task_version": task_version, "method": method, "params": dict(params), "seed": seed}
    return hashlib.sha256(_canonical(ident, "run identity").encode("utf-8")).hexdigest()[:16]


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)  # fsum: exact, so the result does not depend on dataset order


def summarize_heldout(heldout: Mapping[str, Mapping[str, Any]], weight_drift: float | None = None) -> dict[str, float]:
    """The ``metrics.summary`` block: mean and worst (min) delta LP/ZS over held-out datasets, mean drifts.

    Each statistic is taken over the datasets that have it; a statistic no dataset has is left out.
    ``weight_drift`` is a model-level number, copied in when given.
    """
    out: dict[str, float] = {}
    for key in ("delta_lp", "delta_zs"):
        vals = [float(m[key]) for m in heldout.values() if m.get(key) is not None]
        if vals:
            out[f"{key}_mean"] = _mean(vals)
            out[f"{key}_worst"] = min(vals)
    for d in _DRIFTS:
        vals = [float(m["drift"][d]) for m in heldout.values()
                if isinstance(m.get("drift"), Mapping) and m["drift"].get(d) is not None]
        if vals:
            out[f"drift_{d}_mean"] = _mean(vals)
    if weight_drift is not None:
        out["weight_drift"] = float(weight_drift)
    return out


# ---------------------------------------------------------------------------------------------------- validation

#: Top-level fields of a record; a submission with any other field is refused (data may only sit where it is read).
RECORD_FIELDS = ("schema", "run_id", "status", "task", "method", "seed", "model", "metrics", "training",
                 "trajectory", "timings", "provenance")
#: Absolute tolerance of the consistency checks (a delta against its parts, a summary against the datasets).
CONSISTENCY_TOL = 1e-6
#: Upper bounds of the feature drifts: mean squared distance of unit vectors (<= 4), kernel distance of cosine
#: kernels (<= 2); OTDD is unbounded. The debiased OTDD of identical features can be a rounding error below zero.
_DRIFT_MAX = {"l2": 4.0, "kernel": 2.0, "otdd": math.inf}
_GIT_COMMIT = re.compile(r"[0-9a-f]{40}")


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class _Problems:
    """Collects ``(field, what is wrong)`` pairs; each check returns the value when it is usable, else None."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, msg: str) -> None:
        # field names come from the file (dataset names are keys): control characters in them would break the
        # one-line message, so they are shown escaped
        self.items.append((_one_line(where), _one_line(msg)))

    def obj(self, rec: Mapping, key: str, where: str) -> dict | None:
        if key not in rec:
            return self.add(f"{where}{key}", "is missing")
        if not isinstance(rec[key], dict):
            return self.add(f"{where}{key}", f"must be an object, got {type(rec[key]).__name__}")
        return rec[key]

    def num(self, rec: Mapping, key: str, where: str, lo: float | None = None, hi: float | None = None,
            unit: str = "percent") -> float | None:
        if key not in rec:
            return self.add(f"{where}{key}", "is missing")
        v = rec[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return self.add(f"{where}{key}", f"must be a number, got {type(v).__name__} {v!r}")
        if not math.isfinite(v):
            return self.add(f"{where}{key}", f"must be finite, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return self.add(f"{where}{key}", f"must be in [{lo}, {hi}] ({unit}), got {v!r}")
        return float(v)

    def text(self, rec: Mapping, key: str, where: str, optional: bool = False) -> str | None:
        if key not in rec:
            return None if optional else self.add(f"{where}{key}", "is missing")
        v = rec[key]
        if optional and v is None:
            return None
        if not isinstance(v, str) or not v:
            return self.add(f"{where}{key}", f"must be a non-empty string, got {v!r}")
        return v

    def integer(self, rec: Mapping, key: str, where: str, lo: int) -> int | None:
        if key not in rec:
            return self.add(f"{where}{key}", "is missing")
        v = rec[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            return self.add(f"{where}{key}", f"must be an integer >= {lo}, got {v!r}")
        return v

    def difference(self, m: Mapping, key: str, a: str, b: str, where: str) -> None:
        """``m[key]`` must equal ``m[a] - m[b]`` (all three already checked to be numbers)."""
        if all(isinstance(m.get(k), (int, float)) and math.isfinite(m[k]) for k in (key, a, b)):
            if abs(m[key] - (m[a] - m[b])) > CONSISTENCY_TOL:
                self.add(f"{where}{key}", f"is {m[key]!r} but {a} - {b} = {m[a] - m[b]!r} (tolerance {CONSISTENCY_TOL})")


def _check_heldout(p: _Problems, heldout: Mapping, where: str, full: bool) -> bool:
    """Per-dataset numbers; ``full`` = accuracies must be there (the final model), else only what is present.

    Returns whether every entry is well-formed (so that a summary can be recomputed from it).
    """
    before = len(p.items)
    for name, m in heldout.items():
        at = f"{where}{name}."
        if not isinstance(m, dict):
            p.add(at[:-1], f"must be an object, got {type(m).__name__}")
            continue
        for metric in ("lp", "zs"):
            keys = (metric, f"{metric}_reference", f"delta_{metric}")
            present = [k for k in keys if k in m]
            if not present and (metric == "zs" or not full):
                continue  # zero-shot needs a text tower; checkpoints may carry deltas only
            if full or keys[0] in m or keys[1] in m:  # the keys come as a set of three; checkpoints may have deltas only
                for k in keys[:2]:
                    p.num(m, k, at, 0, 100)
            p.num(m, keys[2], at, -100, 100, unit="points")
            p.difference(m, keys[2], keys[0], keys[1], at)
        if "drift" in m:
            drift = p.obj(m, "drift", at)
            for k in drift or {}:
                p.num(drift, k, f"{at}drift.", -CONSISTENCY_TOL, _DRIFT_MAX.get(k, math.inf), unit="a distance")
    return len(p.items) == before


def _check_summary(p: _Problems, summary: Mapping, heldout: Mapping, where: str) -> None:
    """Every statistic ``summarize_heldout`` derives from the datasets must be there and equal to it."""
    for k in summary:
        p.num(summary, k, where)
    wd = summary.get("weight_drift")
    if wd is not None:
        p.num(summary, "weight_drift", where, 0, None, unit="a relative distance")
    expected = summarize_heldout(heldout, weight_drift=wd if isinstance(wd, (int, float)) else None)
    for k, v in expected.items():
        got = summary.get(k)
        if k not in summary:
            p.add(f"{where}{k}", f"is missing (the held-out datasets give {v!r})")
        elif isinstance(got, (int, float)) and not isinstance(got, bool) and math.isfinite(got) \
                and abs(got - v) > CONSISTENCY_TOL:
            p.add(f"{where}{k}", f"is {got!r} but the held-out datasets give {v!r} (tolerance {CONSISTENCY_TOL})")


def _check_absent(p: _Problems, metrics: Mapping) -> None:
    """The absent-class block (``forgetbench.evaluate.absent``): accuracies in [0, 100], AUSUC in [0, 1]."""
    absent = p.obj(metrics, "absent", "metrics.")
    if absent is None:
        return
    for block, at in ((absent, "metrics.absent."), (p.obj(absent, "reference", "metrics.absent.") or {},
                                                    "metrics.absent.reference.")):
        for section in ("acc", "calibrated", "ncm"):
            if section in block or section == "ncm":
                for k in p.obj(block, section, at) or {}:
                    p.num(block[section], k, f"{at}{section}.", 0, 100)
        if "acc" in block:
            p.num(block, "ausuc", at, 0, 1, unit="a fraction of the unit square")
            p.num(block, "gamma", at, unit="logits")


def _check_trajectory(p: _Problems, trajectory: Any) -> None:
    if not isinstance(trajectory, list):
        return p.add("trajectory", f"must be a list of checkpoints, got {type(trajectory).__name__}")
    for i, cp in enumerate(trajectory):
        at = f"trajectory[{i}]."
        if not isinstance(cp, dict):
            p.add(at[:-1], f"must be an object, got {type(cp).__name__}")
            continue
        p.integer(cp, "step", at, 0)
        heldout = p.obj(cp, "heldout", at)
        summary = p.obj(cp, "summary", at)
        if heldout is not None and _check_heldout(p, heldout, f"{at}heldout.", full=False) and summary is not None:
            _check_summary(p, summary, heldout, f"{at}summary.")


def _check_provenance(p: _Problems, prov: Mapping, seed: Any) -> None:
    """What a submission must say about where it came from: code commit, versions, hardware, seed."""
    commit = prov.get("git_commit")
    if not isinstance(commit, str) or not _GIT_COMMIT.fullmatch(commit):
        p.add("provenance.git_commit", f"must be the 40-hex commit of the forgetbench code that made the run, got "
                                       f"{commit!r} (run from a git checkout of forgetbench)")
    if not isinstance(prov.get("git_dirty"), bool):
        p.add("provenance.git_dirty", f"must be true or false, got {prov.get('git_dirty')!r}")
    versions = p.obj(prov, "versions", "provenance.")
    if versions is not None:
        for k in ("python", "forgetbench", "torch"):
            p.text(versions, k, "provenance.versions.")
    hardware = p.obj(prov, "hardware", "provenance.")
    if hardware is not None:
        p.text(hardware, "platform", "provenance.hardware.")
    if "seed" not in prov:
        p.add("provenance.seed", "is missing")
    elif prov["seed"] != seed:
        p.add("provenance.seed", f"is {prov['seed']!r} but the record's seed is {seed!r}")
    p.text(prov, "timestamp_utc", "provenance.")


def _protocol(spec_dict: Mapping) -> dict:
    """The parts of a resolved task that define the measurement (not its default methods and seeds)."""
    return {k: spec_dict.get(k) for k in ("model", "finetune", "evaluate", "train", "sequence")}


def _check_task_known(p: _Problems, task: Mapping, record: Mapping) -> None:
    """The task is registered, the record is of its current version and was run under exactly its protocol."""
    from .errors import ForgetbenchError
    from .tasks import TaskSpec, load_task

    name, version, spec = task.get("name"), task.get("version"), task.get("spec")
    if not isinstance(name, str) or not isinstance(version, int) or not isinstance(spec, dict):
        return  # already reported
    try:
        current = load_task(name)
    except ForgetbenchError as e:
        return p.add("task.name", f"is not a known task ({e})")
    if version != current.version:
        return p.add("task.version", f"is {version} but task {name!r} is at version {current.version} "
                                     f"({current.source}); only results of the current protocol are accepted")
    try:
        resolved = TaskSpec.from_dict(spec, source="task.spec").to_dict()
    except ForgetbenchError as e:
        return p.add("task.spec", f"is not a valid task ({e})")
    if (resolved["name"], resolved["version"]) != (name, version):
        return p.add("task.spec", f"is task {resolved['name']!r} version {resolved['version']}, "
                                  f"not {name!r} version {version}")
    mine, theirs = _protocol(resolved), _protocol(current.to_dict())
    for k in mine:
        if mine[k] != theirs[k]:
            p.add(f"task.spec.{k}", f"differs from the protocol of {name!r} v{version} ({current.source}): "
                                    f"{_canonical(mine[k], k)} instead of {_canonical(theirs[k], k)}")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return
    heldout, target = metrics.get("heldout"), metrics.get("target")
    if isinstance(heldout, dict) and sorted(heldout) != sorted(current.evaluate.datasets):
        p.add("metrics.heldout", f"has datasets {sorted(heldout)} but the task evaluates "
                                 f"{sorted(current.evaluate.datasets)}")
    if isinstance(target, dict) and target.get("dataset") != current.finetune.dataset:
        p.add("metrics.target.dataset", f"is {target.get('dataset')!r} but the task fine-tunes on "
                                        f"{current.finetune.dataset!r}")
    model = record.get("model")
    if isinstance(model, dict) and model.get("name") != current.model:
        p.add("model.name", f"is {model.get('name')!r} but the task's model is {current.model!r}")


SEQUENCE_FIELDS = ("schema", "run_id", "status", "task", "method", "seed", "model", "sequence", "metrics", "training",
                   "timings", "provenance")


def _percents(p: _Problems, v: Any, where: str, n: int) -> list | None:
    """``v``: a list of ``n`` accuracies in [0, 100]."""
    if not isinstance(v, list) or len(v) != n:
        return p.add(where, f"must be a list of {n} accuracies (percent), got {v!r:.80}")
    for j, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not 0 <= x <= 100:
            return p.add(f"{where}[{j}]", f"must be an accuracy in [0, 100] (percent), got {x!r}")
    return v


def _matrix(p: _Problems, v: Any, where: str, rows: int, cols: int) -> list | None:
    """``v``: ``rows`` lists of ``cols`` accuracies each."""
    if not isinstance(v, list) or len(v) != rows:
        return p.add(where, f"must be {rows} rows of {cols} accuracies")
    checked = [_percents(p, r, f"{where}[{i}]", cols) for i, r in enumerate(v)]
    return v if all(r is not None for r in checked) else None


def _identity_problems(p: "_Problems", record: dict, submission: bool, schema: str, fields) -> tuple:
    """The checks every record kind shares: run id, status, known fields (submissions) and the task's identity.
    Returns (run_id, task, task name, task version), each None where it is unusable."""
    rid = p.text(record, "run_id", "")
    if rid is not None and not _RUN_ID.fullmatch(rid):
        p.add("run_id", f"must be 16 lowercase hex characters, got {rid!r}")
        rid = None
    if record.get("status") != "complete":
        p.add("status", f"must be 'complete' (failed runs go to {FAILURES_FILE}), got {record.get('status')!r}")
    if submission:
        for k in sorted(set(record) - set(fields)):
            p.add(k, f"is not a field of {schema} (known: {', '.join(fields)})")
    task = p.obj(record, "task", "") or {}
    name = p.text(task, "name", "task.")
    if name is not None and not _TASK_NAME.fullmatch(name):
        p.add("task.name", f"must match {_TASK_NAME.pattern}, got {name!r}")
        name = None
    version = p.integer(task, "version", "task.", 1)
    p.obj(task, "spec", "task.")
    return rid, task, name, version


def _closing_problems(p: "_Problems", record: dict, submission: bool, task: dict, identity: tuple) -> None:
    """The checks every record kind ends with: timings, the run id against its parts, and (submissions) provenance
    and the task's registered spec. ``identity`` is (run_id, task name, version, method, params, seed)."""
    timings = p.obj(record, "timings", "")
    if timings is not None:
        for k in ("finetune_s", "evaluate_s", "total_s"):
            p.num(timings, k, "timings.", 0, None, unit="seconds")
    prov = p.obj(record, "provenance", "")
    rid, name, version, mname, params, seed = identity
    if None not in identity:
        try:
            expected = run_id(name, version, mname, params, seed)
        except SpecError as e:
            p.add("method.params", str(e))
        else:
            if rid != expected:
                p.add("run_id", f"{rid!r} does not match task/method/params/seed (expected {expected!r})")
    if submission:
        if prov is not None:
            _check_provenance(p, prov, record.get("seed"))
        _check_task_known(p, task, record)


def _sequence_problems(record: dict, submission: bool) -> list[tuple[str, str]]:
    """``record_problems`` of a ``forgetbench.sequence/1`` record: the run's identity as for every record, the accuracy
    matrices (in [0, 100], shaped by the steps and held-out datasets) and summaries that equal what the matrices
    give (``forgetbench.evaluate.sequences``)."""
    from .evaluate.sequences import heldout_metrics, sequence_metrics

    p = _Problems()
    rid, task, name, version = _identity_problems(p, record, submission, SEQUENCE_SCHEMA, SEQUENCE_FIELDS)
    method = p.obj(record, "method", "") or {}
    mname = p.text(method, "name", "method.")
    params = p.obj(method, "params", "method.")
    seed = p.integer(record, "seed", "", 0)
    p.text(p.obj(record, "model", "") or {}, "name", "model.")

    seq = p.obj(record, "sequence", "") or {}
    steps, heldout, kinds = seq.get("steps"), seq.get("heldout"), seq.get("accuracy")
    if not isinstance(steps, list) or not steps or any(not isinstance(s, dict) or not isinstance(s.get("name"), str)
                                                       for s in steps):
        p.add("sequence.steps", "must be a non-empty list of {name, classes}")
        steps = None
    if not isinstance(heldout, list) or any(not isinstance(h, str) for h in heldout):
        p.add("sequence.heldout", "must be a list of dataset names")
        heldout = None
    if seq.get("reference") not in ("previous", "original"):
        p.add("sequence.reference", f"must be 'previous' or 'original', got {seq.get('reference')!r}")
    if not isinstance(kinds, list) or not kinds or any(k not in ("zs", "lp") for k in kinds):
        p.add("sequence.accuracy", f"must be a non-empty list of 'zs' and 'lp', got {kinds!r}")
        kinds = None

    metrics = p.obj(record, "metrics", "") or {}
    if steps is not None and heldout is not None and kinds is not None:
        T, K = len(steps), len(heldout)
        _percents(p, metrics.get("target"), "metrics.target", T)  # the fine-tuned head on each step
        for k in kinds:
            at = f"metrics.{k}."
            m = p.obj(metrics, k, "metrics.")
            if m is None:
                continue
            R, H = _matrix(p, m.get("R"), f"{at}R", T, T), _matrix(p, m.get("heldout"), f"{at}heldout", T, K)
            b = _percents(p, m.get("reference"), f"{at}reference", T)
            hb = _percents(p, m.get("heldout_reference"), f"{at}heldout_reference", K)
            summary = p.obj(m, "summary", at)
            if summary is None or any(x is None for x in (R, H, b, hb)):
                continue
            expected = {**sequence_metrics(R, b), **heldout_metrics(H, hb)}
            for key, v in expected.items():
                got = p.num(summary, key, f"{at}summary.")
                if got is not None and abs(got - v) > CONSISTENCY_TOL:
                    p.add(f"{at}summary.{key}", f"is {got!r} but the matrices give {v!r} (tolerance {CONSISTENCY_TOL})")
    _closing_problems(p, record, submission, task, (rid, name, version, mname, params, seed))
    return p.items


def record_problems(record: Any, *, submission: bool = False) -> list[tuple[str, str]]:
    """Every problem of a ``forgetbench.result/1`` record, as ``(field, what is wrong)``; empty when it is valid.

    Always checked: keys and types, ranges (accuracies in [0, 100], deltas in [-100, 100], drifts >= 0), internal
    consistency (each delta equals fine-tuned minus reference, every summary equals what its datasets give, within
    ``CONSISTENCY_TOL``) and that ``run_id`` matches the run's identity, so a hand-edited record cannot shadow
    another run. With ``submission=True`` also: no unknown top-level field, provenance complete (commit, dirty
    flag, versions, hardware, seed, time), and the task known, at its current version, run under its protocol.
    """
    if not isinstance(record, dict):
        return [("record", f"must be a JSON object, got {type(record).__name__}")]
    if record.get("schema") == SEQUENCE_SCHEMA:
        return _sequence_problems(record, submission)
    p = _Problems()
    if record.get("schema") != RESULT_SCHEMA:
        p.add("schema", f"must be {RESULT_SCHEMA!r}, got {record.get('schema')!r}")
    rid, task, name, version = _identity_problems(p, record, submission, RESULT_SCHEMA, RECORD_FIELDS)

    method = p.obj(record, "method", "") or {}
    mname = p.text(method, "name", "method.")
    params = p.obj(method, "params", "method.")
    p.text(method, "reference", "method.", optional=True)

    seed = p.integer(record, "seed", "", 0)
    model = p.obj(record, "model", "") or {}
    p.text(model, "name", "model.")
    p.text(model, "weights_sha256", "model.", optional=True)

    metrics = p.obj(record, "metrics", "") or {}
    target = p.obj(metrics, "target", "metrics.")
    if target is not None:
        p.text(target, "dataset", "metrics.target.")
        for k in ("acc", "acc_reference"):
            p.num(target, k, "metrics.target.", 0, 100)
        p.num(target, "gain", "metrics.target.", -100, 100, unit="points")
        p.difference(target, "gain", "acc", "acc_reference", "metrics.target.")
    heldout = p.obj(metrics, "heldout", "metrics.")
    summary = p.obj(metrics, "summary", "metrics.")
    if heldout is not None and _check_heldout(p, heldout, "metrics.heldout.", full=True) and summary is not None:
        _check_summary(p, summary, heldout, "metrics.summary.")
    if "absent" in metrics:
        _check_absent(p, metrics)
    if "trajectory" in record:
        _check_trajectory(p, record["trajectory"])

    _closing_problems(p, record, submission, task, (rid, name, version, mname, params, seed))
    return p.items


def validate_record(record: Any, *, submission: bool = False) -> None:
    """Raise SpecError naming every bad field of ``record`` (see ``record_problems``); return None when it is valid."""
    problems = record_problems(record, submission=submission)
    if problems:
        raise SpecError("result record: " + "; ".join(f"{where} {msg}" for where, msg in problems))


# --------------------------------------------------------------------------------------------------------- store

def _line(obj: Any, what: str) -> bytes:
    """One JSON line; NaN/inf and non-JSON values are refused before anything touches the file."""
    try:
        text = json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise SpecError(f"{what}: NaN or infinite number refused ({e}); a diverged run is a failure, not a result") from None
    except TypeError as e:
        raise SpecError(f"{what}: not JSON-serialisable ({e}); convert tensors/arrays to plain numbers") from None
    return (text + "\n").encode("utf-8")


def _jsonable_failure(obj: Any) -> Any:
    """Failure records must always be writable: non-finite floats become strings, unknown objects their repr."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable_failure(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable_failure(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_lines(data: bytes, path: Path, warn: bool) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each parseable JSON-object line; others skipped, with a warning if ``warn``."""
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError(f"a JSON {type(obj).__name__}, not an object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if warn:
                warnings.warn(f"{path}:{lineno}: skipped corrupt or truncated line ({e})", stacklevel=3)
            continue
        yield lineno, obj


@contextmanager
def _locked_append_fd(path: Path) -> Iterator[int]:
    """An O_APPEND descriptor of ``path`` holding an exclusive flock on the file currently at ``path``.

    A ``replace`` swaps the inode; a writer that waited on the old inode would append to a file nobody reads,
    so after locking we check the path still names our inode and retry otherwise.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                try:
                    yield fd
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _append_line(fd: int, line: bytes) -> None:
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        line = b"\n" + line  # a crashed writer left a partial line: don't glue our record onto it
    written = os.write(fd, line)  # one write with O_APPEND: the line lands whole, after every other line
    if written != len(line):
        raise OSError(f"short write ({written} of {len(line)} bytes)")
    os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ResultStore:
    """Records under ``root/<task-name>.jsonl`` (one JSON object per line); failures in ``root/failures.jsonl``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, task: str) -> Path:
        """The file holding ``task``'s records."""
        if not isinstance(task, str) or not _TASK_NAME.fullmatch(task) or task + ".jsonl" == FAILURES_FILE:
            raise SpecError(f"invalid task name {task!r} for the results store: use letters, digits, '.', '_', '-' "
                            f"(not starting with a symbol), and not 'failures'")
        return self.root / f"{task}.jsonl"

    def append(self, record: dict, replace: bool = False) -> bool:
        """Validate and append ``record``; return False (nothing written) if its run_id is already stored.

        With ``replace=True`` an existing record of the same run is swapped for this one, atomically.
        """
        validate_record(record)
        line = _line(record, f"result record {record['run_id']}")
        path = self.path(record["task"]["name"])
        rid = record["run_id"]
        with _locked_append_fd(path) as fd:
            data = _read_all(fd)
            kept = [raw for raw in data.split(b"\n") if raw.strip()]
            dup = any(obj.get("run_id") == rid for _, obj in _parse_lines(data, path, warn=False))
            if not dup:
                _append_line(fd, line)
                return True
            if not replace:
                return False
            # Rewrite without the old record; corrupt lines are kept as they were (they are evidence).
            others = []
            for raw in kept:
                try:
                    if json.loads(raw.decode("utf-8")).get("run_id") == rid:
                        continue
                except (ValueError, AttributeError):
                    pass
                others.append(raw + b"\n")
            tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
            try:
                with tmp:
                    tmp.write(b"".join(others) + line)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                os.chmod(tmp.name, 0o644)
                os.replace(tmp.name, path)
            except BaseException:
                Path(tmp.name).unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)
            return True

    def write_failure(self, run_info: Mapping[str, Any], reason: str) -> None:
        """Append a failed run to ``failures.jsonl`` (never to a task file, so it is never taken as complete)."""
        info = dict(run_info)
        rec: dict[str, Any] = {"schema": FAILURE_SCHEMA, "status": "failed", "reason": str(reason),
                               "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            rec["run_id"] = run_id(info["task"], info["task_version"], info["method"], info["params"], info["seed"])
        except (KeyError, TypeError, SpecError):
            rec["run_id"] = info.get("run_id")
        rec["run"] = _jsonable_failure(info)
        line = _line(rec, "failure record")
        with _locked_append_fd(self.root / FAILURES_FILE) as fd:
            _append_line(fd, line)

    def _read(self, path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return b""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # no half-written line from a concurrent append
            try:
                return _read_all(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def tasks(self) -> list[str]:
        """Names of the tasks that have a records file."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.jsonl") if p.name != FAILURES_FILE)

    def load(self, task: str | None = None) -> list[dict]:
        """All valid records (of one task, or of every task), in file order.

        Corrupt, truncated or invalid lines are skipped with a warning naming the file and line; never raises
        for bad content.
        """
        paths = [self.path(task)] if task is not None else [self.root / f"{t}.jsonl" for t in self.tasks()]
        out = []
        for path in paths:
            for lineno, obj in _parse_lines(self._read(path), path, warn=True):
                try:
                    validate_record(obj)
                except SpecError as e:
                    warnings.warn(f"{path}:{lineno}: skipped invalid record ({e})", stacklevel=2)
                    continue
                out.append(obj)
        return out

    def has(self, run_id: str, task: str | None = None) -> bool:
        """Whether a record with this run id is stored (in ``task``'s file, or in any)."""
        return run_id in self.run_ids(task)

    def run_ids(self, task: str | None = None) -> set[str]:
        """The run ids stored (in ``task``'s file, or in any), read once: what a sweep checks its runs against."""
        paths = [self.path(task)] if task is not None else [self.root / f"{t}.jsonl" for t in self.tasks()]
        return {obj.get("run_id") for path in paths for _, obj in _parse_lines(self._read(path), path, warn=False)}

    def failures(self) -> list[dict]:
        """The failure records, corrupt lines skipped with a warning."""
        path = self.root / FAILURES_FILE
        return [obj for _, obj in _parse_lines(self._read(path), path, warn=True)]
