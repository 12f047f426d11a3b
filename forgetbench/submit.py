"""Submitted result files: check them line by line, then merge them into a results folder atomically.

A submission is data and only data: a UTF-8 file of JSON lines, one ``forgetbench.result/1`` record per line. It is
read with ``json.loads`` and nothing else, never unpickled, imported or evaluated, and a file that carries a pickle
or code anyway (a binary pickle, a zip archive from ``torch.save``, Python source, a jsonpickle ``py/object`` tag, a
base64 pickle inside a string) is refused outright. Every problem is reported as ``FILE:LINE: field: what is
wrong``; a submission with any problem changes nothing.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import SpecError
from .records import ResultStore, record_problems
from .records.agreement import agree, disagreements
from .method_sources import MethodSources, carried
from .records.store import StoredMeanwhile

#: Larger files are refused unread: a results file of thousands of runs is a few MiB.
MAX_BYTES = 64 << 20

_BINARY = [  # (leading bytes, what they are)
    (re.compile(rb"\x80[\x02-\x05]"), "a binary pickle"),
    (re.compile(rb"PK\x03\x04"), "a zip archive (torch.save writes pickles in one)"),
    (re.compile(rb"\x1f\x8b"), "gzip-compressed data"),
    (re.compile(rb"\x93NUMPY"), "a numpy array file"),
]
_PICKLE_GLOBAL = re.compile(r"(?:^|[\n(])c[A-Za-z_][\w.]*\n[A-Za-z_]\w*\n")  # protocol-0 pickles are ASCII text
_CODE_LINE = re.compile(r"^\s*(import\s|from\s+\S+\s+import\s|def\s|class\s|#!|exec\(|eval\(|__import__|lambda\b|"
                        r"os\.system|subprocess\.)")
_CODE_IN_TEXT = re.compile(r"__import__\s*\(|\bos\.system\s*\(|\bsubprocess\.\w+\s*\(|\b(?:exec|eval)\s*\(|"
                           r"!!python/|^py/")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]{16,}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Problem:
    """One thing wrong with a submission; ``str()`` gives ``FILE:LINE: field: what is wrong``."""

    path: str
    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        at = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{at}: {self.where}: {self.message}"


class SubmissionError(SpecError):
    """A submission was refused; ``problems`` holds every reason, the message the first one and a count."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}; nothing was changed")


@dataclass
class Submission:
    """What a submitted file holds: its records with their line numbers, and every problem found."""

    path: Path
    records: list[tuple[int, dict]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    already_stored: list[str] = field(default_factory=list)  # run ids stored before, agreeing (records.agreement)
    carried: dict[str, str] = field(default_factory=dict)  # method source sha256 -> method, of every valid record

    def problem(self, line: int | None, where: str, message: str) -> None:
        self.problems.append(Problem(str(self.path), line, where, message))


@dataclass
class MergeResult:
    """What ``submit`` did: records added per results file, and runs that were already stored identically."""

    added: dict[Path, int]
    already_stored: list[str]
    sources: list[Path] = field(default_factory=list)  # method sources stored (``forgetbench.method_sources``)


# ------------------------------------------------------------------------------------------------------- reading

def _strict_json(text: str) -> Any:
    def no_constants(name: str):
        raise ValueError(f"{name} is not JSON data (numbers must be finite)")

    def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"key {k!r} appears twice in one object (which value counts would be ambiguous)")
            out[k] = v
        return out

    return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicate_keys)


def _strings(obj: Any, where: str = "") -> Iterator[tuple[str, str, bool]]:
    """(field path, string, is a key) for every key and string value in a parsed record."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{where}.{k}" if where else k
            yield path, k, True
            yield from _strings(v, path)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        yield where, obj, False


def _embedded_payload(text: str, is_key: bool) -> str | None:
    """What kind of pickle or code a string carries, if any (it is never decoded for use, only inspected)."""
    if is_key and (text.startswith("py/") or (text.startswith("__") and text.endswith("__"))):
        return f"a serialiser tag {text!r} (jsonpickle and friends rebuild objects from such keys)"
    if _CODE_IN_TEXT.search(text):
        return "code"
    if _looks_pickled(text):
        return "a text pickle"
    if _BASE64.fullmatch(text):
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            return None
        for magic, what in _BINARY:
            if magic.match(raw):
                return f"{what}, base64-encoded"
    return None


def _looks_pickled(text: str) -> bool:
    return bool(_PICKLE_GLOBAL.search(text)) and text.rstrip().endswith(".")


def _hint(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    if _CODE_LINE.match(text):
        return " (it looks like Python code; submissions are JSON lines, nothing in them is ever run)"
    if _PICKLE_GLOBAL.search(text):
        return " (it looks like a pickle; submissions are JSON lines, never unpickled)"
    return ""


def read_submission(path: str | os.PathLike) -> Submission:
    """Parse a submitted file as JSON lines, refusing pickles and code; records come with their line numbers."""
    path = Path(path)
    sub = Submission(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            sub.problem(None, "file", f"is {size} bytes, more than the {MAX_BYTES} accepted")
            return sub
        data = path.read_bytes()
    except OSError as e:
        sub.problem(None, "file", f"cannot be read ({e.strerror or e})")
        return sub
    for magic, what in _BINARY:
        if magic.match(data):
            sub.problem(1, "file", f"is {what}, not JSON lines; submissions are data and are never unpickled")
            return sub
    if b"\x00" in data:
        sub.problem(data[:data.index(b"\x00")].count(b"\n") + 1, "file",
                    "contains NUL bytes: binary data, not JSON lines")
        return sub
    if _looks_pickled(data.decode("utf-8", "replace")):
        sub.problem(1, "file", "is a text (protocol 0) pickle, not JSON lines; submissions are never unpickled")
        return sub
    lines = data.split(b"\n")
    if not any(raw.strip() for raw in lines):
        sub.problem(None, "file", "has no records (expected one JSON object per line)")
        return sub
    for i, raw in enumerate(lines):
        lineno = i + 1
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            sub.problem(lineno, "line", f"is not UTF-8 text (byte {e.start}); submissions are JSON lines")
            continue
        try:
            obj = _strict_json(text)
        except ValueError as e:
            # an error at the very end of the text: the record stops early (a cut download, a crashed writer)
            truncated = isinstance(e, json.JSONDecodeError) and (
                e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"))
            what = "truncated JSON (the record ends early)" if truncated else "not valid JSON"
            sub.problem(lineno, "line", f"{what}: {e}{_hint(raw)}")
            continue
        if not isinstance(obj, dict):
            sub.problem(lineno, "line", f"is a JSON {type(obj).__name__}, not an object (one record per line)")
            continue
        payloads = [(where, kind) for where, s, is_key in _strings(obj) if (kind := _embedded_payload(s, is_key))]
        for where, kind in payloads:
            sub.problem(lineno, where, f"carries {kind}; submissions are plain data and nothing in them is run")
        if not payloads:
            sub.records.append((lineno, obj))
    return sub


# ------------------------------------------------------------------------------------------------------ checking

def check_submission(path: str | os.PathLike, results: str | os.PathLike | None = None) -> Submission:
    """Read and check every record of a submission; with ``results``, also against the runs stored there.

    A record whose run is already stored and agrees with it (``forgetbench.records.agreement``: every measured number
    within the reproducibility tolerance) is kept aside (``Submission.records`` drops it and ``already_stored`` lists
    it); one that disagrees is a problem naming the first field, both values and the tolerance.
    """
    sub = read_submission(path)
    seen: dict[str, int] = {}
    good: list[tuple[int, dict]] = []
    for lineno, rec in sub.records:
        problems = record_problems(rec, submission=True)
        method = rec.get("method")
        if isinstance(method, dict) and isinstance(method.get("name"), str) and not _NAME.fullmatch(method["name"]):
            problems.append(("method.name", f"must match {_NAME.pattern}, got {method['name']!r}"))
        rid = rec.get("run_id")
        if isinstance(rid, str):
            if rid in seen:
                problems.append(("run_id", f"{rid} is also on line {seen[rid]}: each run once (same task, method, "
                                           f"params and seed)"))
            else:
                seen[rid] = lineno
        for where, msg in problems:
            sub.problem(lineno, where, msg)
        if not problems:
            good.append((lineno, rec))
    sub.records = good
    sub.carried = carried(good)
    if results is None or sub.problems:
        return sub
    store = ResultStore(results)
    stored = {t: store.stored(t) for t in sorted({r["task"]["name"] for _, r in good})}
    fresh = []
    for lineno, rec in good:
        old = stored[rec["task"]["name"]].get(rec["run_id"])
        if old is None:
            fresh.append((lineno, rec))
        elif not (differ := disagreements(rec, old[1])):  # the same run, reproduced: nothing to add
            sub.already_stored.append(rec["run_id"])
        else:
            more = f" (and {len(differ) - 1} more field(s))" if len(differ) > 1 else ""
            sub.problem(lineno, differ[0].field,
                        f"run {rec['run_id']} ({rec['method']['name']}, seed {rec['seed']}) is already recorded in "
                        f"{store.path(rec['task']['name'])}:{old[0]} and the two disagree: "
                        f"{differ[0].describe('submitted', 'recorded')}{more}; a run is recorded once")
    sub.records = fresh
    return sub


# ------------------------------------------------------------------------------------------------------- merging

def submit(path: str | os.PathLike, results: str | os.PathLike = "results",
           sources: MethodSources | None = None) -> MergeResult:
    """Check a submission and append its records to ``results/<task>.jsonl``; raise SubmissionError on any problem.
    ``sources``' given method files (data, never imported) must each be one a record carries the sha256 of; they
    are stored once the records are.

    All or nothing (``ResultStore.merge``): on refusal or error the results folder is left byte for byte as it was.
    """
    sub = check_submission(path, results)
    if sub.problems:
        raise SubmissionError(sub.problems)
    if sources is not None:
        sources.require_claimed(sub.carried, path)
    by_task: dict[str, list[tuple[int, dict]]] = {}
    for lineno, rec in sub.records:
        by_task.setdefault(rec["task"]["name"], []).append((lineno, rec))
    try:
        added = ResultStore(results).merge(by_task, same_run=agree)  # a copy stored meanwhile is not a conflict
    except StoredMeanwhile as e:  # a concurrent run or submission stored it after the check
        raise SubmissionError([Problem(str(path), e.line, "run_id", f"run {e.run_id} was stored in {e.path} while "
                                                                    "this submission was being merged")]) from None
    stored = sources.store() if sources is not None else []  # after the records: a refused merge writes nothing
    return MergeResult({p: n for p, n in added.items() if n}, sub.already_stored + added.already_stored, stored)
