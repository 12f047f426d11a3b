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

def _fail(where: str, msg: str) -> None:
    raise SpecError(f"result record: {where} {msg}")


def _dict(rec: Mapping, key: str, where: str) -> dict:
    if key not in rec:
        _fail(f"{where}{key}", "is missing")
    if not isinstance(rec[key], dict):
        _fail(f"{where}{key}", f"must be an object, got {type(rec[key]).__name__}")
    return rec[key]


def _number(rec: Mapping, key: str, where: str, lo: float | None = None, hi: float | None = None) -> None:
    if key not in rec:
        _fail(f"{where}{key}", "is missing")
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(f"{where}{key}", f"must be a number, got {type(v).__name__} {v!r}")
    if not math.isfinite(v):
        _fail(f"{where}{key}", f"must be finite, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        _fail(f"{where}{key}", f"must be in [{lo}, {hi}] (percent), got {v!r}")


def _str(rec: Mapping, key: str, where: str, optional: bool = False) -> None:
    if key not in rec:
        if optional:
            return
        _fail(f"{where}{key}", "is missing")
    v = rec[key]
    if optional and v is None:
        return
    if not isinstance(v, str) or not v:
        _fail(f"{where}{key}", f"must be a non-empty string, got {v!r}")


def _int(rec: Mapping, key: str, where: str, lo: int) -> None:
    if key not in rec:
        _fail(f"{where}{key}", "is missing")
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        _fail(f"{where}{key}", f"must be an integer >= {lo}, got {v!r}")


def validate_record(record: Any) -> None:
    """Check the keys and types of a ``forgetbench.result/1`` record; raise SpecError naming the first bad field.

    Also checks that ``run_id`` matches the run's identity, so a hand-edited record cannot shadow another run.
    """
    if not isinstance(record, dict):
        raise SpecError(f"result record must be a JSON object, got {type(record).__name__}")
    if record.get("schema") != RESULT_SCHEMA:
        _fail("schema", f"must be {RESULT_SCHEMA!r}, got {record.get('schema')!r}")
    _str(record, "run_id", "")
    if not _RUN_ID.fullmatch(record["run_id"]):
        _fail("run_id", f"must be 16 lowercase hex characters, got {record['run_id']!r}")
    if record.get("status") != "complete":
        _fail("status", f"must be 'complete' (failed runs go to {FAILURES_FILE}), got {record.get('status')!r}")

    task = _dict(record, "task", "")
    _str(task, "name", "task.")
    if not _TASK_NAME.fullmatch(task["name"]):
        _fail("task.name", f"must match {_TASK_NAME.pattern}, got {task['name']!r}")
    _int(task, "version", "task.", 1)
    _dict(task, "spec", "task.")

    method = _dict(record, "method", "")
    _str(method, "name", "method.")
    _dict(method, "params", "method.")
    _str(method, "reference", "method.", optional=True)

    _int(record, "seed", "", 0)
    model = _dict(record, "model", "")
    _str(model, "name", "model.")
    _str(model, "weights_sha256", "model.", optional=True)

    metrics = _dict(record, "metrics", "")
    target = _dict(metrics, "target", "metrics.")
    _str(target, "dataset", "metrics.target.")
    for k in ("acc", "acc_reference"):
        _number(target, k, "metrics.target.", 0, 100)
    _number(target, "gain", "metrics.target.")

    heldout = _dict(metrics, "heldout", "metrics.")
    for name, m in heldout.items():
        where = f"metrics.heldout.{name}."
        if not isinstance(m, dict):
            _fail(where[:-1], f"must be an object, got {type(m).__name__}")
        for k in ("lp", "lp_reference"):
            _number(m, k, where, 0, 100)
        _number(m, "delta_lp", where)
        zs = [k for k in ("zs", "zs_reference", "delta_zs") if k in m]
        if zs:  # zero-shot keys come as a set of three (absent without a text tower)
            for k in ("zs", "zs_reference"):
                _number(m, k, where, 0, 100)
            _number(m, "delta_zs", where)
        if "drift" in m:
            drift = _dict(m, "drift", where)
            for k in drift:
                _number(drift, k, f"{where}drift.")

    summary = _dict(metrics, "summary", "metrics.")
    for k in summary:
        _number(summary, k, "metrics.summary.")
    if heldout:
        for k in ("delta_lp_mean", "delta_lp_worst"):
            _number(summary, k, "metrics.summary.")

    timings = _dict(record, "timings", "")
    for k in ("finetune_s", "evaluate_s", "total_s"):
        _number(timings, k, "timings.", 0)
    _dict(record, "provenance", "")

    expected = run_id(task["name"], task["version"], method["name"], method["params"], record["seed"])
    if record["run_id"] != expected:
        _fail("run_id", f"{record['run_id']!r} does not match task/method/params/seed (expected {expected!r})")


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
        paths = [self.path(task)] if task is not None else [self.root / f"{t}.jsonl" for t in self.tasks()]
        return any(obj.get("run_id") == run_id
                   for path in paths for _, obj in _parse_lines(self._read(path), path, warn=False))

    def failures(self) -> list[dict]:
        """The failure records, corrupt lines skipped with a warning."""
        path = self.root / FAILURES_FILE
        return [obj for _, obj in _parse_lines(self._read(path), path, warn=True)]
