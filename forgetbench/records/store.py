"""The results store: records under ``root/<task>.jsonl``, one JSON object per line, safe for many writers.

Appends hold an exclusive file lock and write each record as one line, so any number of processes may share a store;
a corrupt or truncated line is reported (``file:line``) and skipped, never glued onto. Every record is validated on
the way in (``append``, ``merge``) and on the way out (``load``). Failed runs go to ``failures.jsonl``.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import warnings
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..atomic import staged_writes
from ..errors import SpecError
from .base import FAILURES_FILE, TASK_NAME, RunRecord, run_id
from .read import parse_record, read_record

FAILURE_SCHEMA = "forgetbench.failure/1"


class StoredMeanwhile(SpecError):
    """A run being merged was stored by someone else after it was checked (``line`` of it in its source)."""

    def __init__(self, path: Path, line: int, rid: str):
        self.path, self.line, self.run_id = path, line, rid
        super().__init__(f"run {rid} was stored in {path} while it was being merged")


def json_line(obj: Any, what: str) -> bytes:
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


def parse_lines(data: bytes, path: Path, warn: bool) -> Iterator[tuple[int, dict]]:
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


def _without_run(data: bytes, rid: str) -> bytes:
    """The lines of ``data`` except the record of run ``rid``; corrupt lines are kept as they were (evidence)."""
    kept = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            if json.loads(raw.decode("utf-8")).get("run_id") == rid:
                continue
        except (ValueError, AttributeError):
            pass
        kept.append(raw + b"\n")
    return b"".join(kept)


class Merged(dict):
    """What ``ResultStore.merge`` did: results file -> records added, and ``already_stored``, the run ids skipped
    because the same run's record was stored meanwhile."""

    def __init__(self):
        super().__init__()
        self.already_stored: list[str] = []


class ResultStore:
    """Records under ``root/<task-name>.jsonl`` (one JSON object per line); failures in ``root/failures.jsonl``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, task: str) -> Path:
        """The file holding ``task``'s records."""
        if not isinstance(task, str) or not TASK_NAME.fullmatch(task) or task + ".jsonl" == FAILURES_FILE:
            raise SpecError(f"invalid task name {task!r} for the results store: use letters, digits, '.', '_', '-' "
                            f"(not starting with a symbol), and not 'failures'")
        return self.root / f"{task}.jsonl"

    def append(self, record: RunRecord | Mapping[str, Any], replace: bool = False) -> bool:
        """Validate and append ``record``; return False (nothing written) if its run is already stored.

        With ``replace=True`` an existing record of the same run is swapped for this one, atomically.
        """
        raw = record.to_json() if isinstance(record, RunRecord) else dict(record)
        typed = parse_record(raw)
        line = json_line(raw, f"result record {typed.run_id}")
        path = self.path(typed.task.name)
        with _locked_append_fd(path) as fd:
            data = _read_all(fd)
            stored = any(obj.get("run_id") == typed.run_id for _, obj in parse_lines(data, path, warn=False))
            if not stored:
                _append_line(fd, line)
                return True
            if not replace:
                return False
            with staged_writes() as stage:
                stage(path, _without_run(data, typed.run_id) + line)
            return True

    def merge(self, records: Mapping[str, list[tuple[int, dict]]],
              same_run: Callable[[dict, dict], bool] | None = None) -> "Merged":
        """Append already checked records (``task -> [(line in their source, record)]``) all at once, or nothing.

        Every affected file is locked (the lock ``append`` takes), checked again for runs stored meanwhile
        (``StoredMeanwhile``, unless ``same_run(ours, stored)`` says the stored one is the same run's record: then
        ours is skipped and listed in ``already_stored``), written to a temporary file beside it and only then swapped
        in; on any error the folder is left byte for byte as it was. Existing lines, even corrupt ones, are kept.
        Returns path -> records added.
        """
        by_path = {self.path(task): recs for task, recs in records.items() if recs}
        merged = Merged()
        paths = sorted(by_path)  # one lock order for every merger: no deadlock between two merges
        created = [p for p in paths if not p.exists()]
        root_created = bool(paths) and not self.root.exists()
        try:
            with ExitStack() as locks, staged_writes() as stage:
                fds = {p: locks.enter_context(_locked_append_fd(p)) for p in paths}
                for p in paths:
                    data = _read_all(fds[p])
                    stored = {obj.get("run_id"): obj for _, obj in parse_lines(data, p, warn=False)}
                    fresh = []
                    for line, rec in by_path[p]:
                        old = stored.get(rec["run_id"])
                        if old is None:
                            fresh.append((line, rec))
                        elif same_run is not None and same_run(rec, old):  # e.g. the same file, submitted twice
                            merged.already_stored.append(rec["run_id"])
                        else:  # a concurrent run or submission stored it after the check
                            raise StoredMeanwhile(p, line, rec["run_id"])
                    merged[p] = len(fresh)
                    if not fresh:
                        continue
                    if data and not data.endswith(b"\n"):
                        data += b"\n"  # a crashed writer's partial line stays, on its own line
                    stage(p, data + b"".join(json_line(r, f"record on line {n}") for n, r in fresh))
        except BaseException:
            for p in created:  # the lock created an empty file; a refused merge leaves no trace
                if p.exists() and p.stat().st_size == 0:
                    p.unlink()
            if root_created and self.root.exists() and not any(self.root.iterdir()):
                self.root.rmdir()
            raise
        for p in created:  # every run was there already: the empty file the lock made goes
            if not merged.get(p) and p.exists() and p.stat().st_size == 0:
                p.unlink()
        return merged

    def write_failure(self, run_info: Mapping[str, Any], reason: str) -> None:
        """Append a failed run to ``failures.jsonl`` (never to a task file, so it is never taken as complete)."""
        info = dict(run_info)
        rec: dict[str, Any] = {"schema": FAILURE_SCHEMA, "status": "failed", "reason": str(reason),
                               "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            rec["run_id"] = run_id(info["task"], info["task_version"], info["method"], info["params"], info["seed"],
                                   info.get("mode"))
        except (KeyError, TypeError, SpecError):
            rec["run_id"] = info.get("run_id")
        rec["run"] = _jsonable_failure(info)
        line = json_line(rec, "failure record")
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

    def _paths(self, task: str | None) -> list[Path]:
        return [self.path(task)] if task is not None else [self.root / f"{t}.jsonl" for t in self.tasks()]

    def tasks(self) -> list[str]:
        """Names of the tasks that have a records file."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.jsonl") if p.name != FAILURES_FILE)

    def load(self, task: str | None = None) -> list[RunRecord]:
        """All valid records (of one task, or of every task), in file order.

        Corrupt, truncated or invalid lines are skipped with a warning naming the file and line; never raises
        for bad content.
        """
        out = []
        for path in self._paths(task):
            for lineno, obj in parse_lines(self._read(path), path, warn=True):
                record, problems = read_record(obj)
                if problems:
                    what = "; ".join(f"{where}: {message}" for where, message in problems)
                    warnings.warn(f"{path}:{lineno}: skipped invalid record ({what})", stacklevel=2)
                    continue
                out.append(record)
        return out

    def stored(self, task: str) -> dict[str, tuple[int, dict]]:
        """The records stored for ``task`` as they are on disk: run id -> (line, JSON object), unchecked."""
        path = self.path(task)
        return {obj["run_id"]: (lineno, obj) for lineno, obj in parse_lines(self._read(path), path, warn=False)
                if isinstance(obj.get("run_id"), str)}

    def has(self, run_id: str, task: str | None = None) -> bool:
        """Whether a record with this run id is stored (in ``task``'s file, or in any)."""
        return run_id in self.run_ids(task)

    def run_ids(self, task: str | None = None) -> set[str]:
        """The run ids stored (in ``task``'s file, or in any), read once: what a sweep checks its runs against."""
        return {obj.get("run_id") for path in self._paths(task)
                for _, obj in parse_lines(self._read(path), path, warn=False)}

    def failures(self) -> list[dict]:
        """The failure records, corrupt lines skipped with a warning."""
        path = self.root / FAILURES_FILE
        return [obj for _, obj in parse_lines(self._read(path), path, warn=True)]
