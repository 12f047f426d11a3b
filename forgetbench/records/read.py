"""Reading a record: JSON object -> the typed record of its protocol, with every problem as ``(field, message)``.

This is the one validator of records; the store runs it on every write and every read, ``forgetbench
validate-results`` and ``submit`` run it with the submission rules on top: no unknown top-level field, complete
provenance (code commit, versions, hardware, seed, time), and a task that is registered, at its current version and
run under exactly its protocol.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..protocol import record_types
from ..errors import ForgetbenchError, SpecError
from ..schema import Flag, Integer, Nullable, Problems, Section, Text, entry, extras, keys, read
from ..tasks import TaskSpec, load_task
from .base import RunRecord, canonical

_GIT_COMMIT = re.compile(r"[0-9a-f]{40}")


class RecordError(SpecError):
    """A record that cannot be used; ``problems`` holds every ``(field, message)``."""

    def __init__(self, problems: list[tuple[str, str]], what: str = "result record"):
        self.problems = problems
        super().__init__(f"{what}: " + "; ".join(f"{where}: {message}" for where, message in problems))


def record_type_for(raw: Mapping[str, Any], problems: Problems) -> type[RunRecord]:
    """The most specific record type of ``raw``'s schema that accepts it (an unknown schema is a problem, and the
    record is then read as the first protocol's, so that its other problems are found too)."""
    types = record_types()
    fitting = [t for t in types if t.SCHEMA == raw.get("schema") and t.accepts(raw)]
    if not fitting:
        schemas = ", ".join(dict.fromkeys(repr(t.SCHEMA) for t in types))
        problems.add("schema", f"expected one of {schemas}, got {raw.get('schema')!r}")
        return types[0]
    return next(t for t in fitting if all(issubclass(t, other) for other in fitting))


def read_record(raw: Any, *, submission: bool = False) -> tuple[RunRecord | None, list[tuple[str, str]]]:
    """(the typed record or None, every problem) of one parsed JSON record."""
    if not isinstance(raw, dict):
        return None, [("record", f"expected a JSON object, got {type(raw).__name__}")]
    problems = Problems()
    cls = record_type_for(raw, problems)
    record = read(cls, raw, problems)
    if submission:
        _submission_problems(raw, record or None, cls, problems)
    return (record if not problems.items else None), problems.items


def parse_record(raw: Any) -> RunRecord:
    """The typed record of ``raw``; a ``RecordError`` naming every bad field when it is not a valid record."""
    record, problems = read_record(raw)
    if problems:
        raise RecordError(problems)
    return record


def record_problems(raw: Any, *, submission: bool = False) -> list[tuple[str, str]]:
    """Every problem of a record as ``(field, message)``; empty when it is valid (see ``read_record``)."""
    return read_record(raw, submission=submission)[1]


# ----------------------------------------------------------------------------------------------------- submission

@dataclass(frozen=True, kw_only=True)
class _Versions:
    python: str = entry(Text())
    forgetbench: str = entry(Text())
    torch: str = entry(Text())
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class _Hardware:
    platform: str = entry(Text())
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class _Provenance:
    """What a submission must say about where it came from (a run's own provenance may lack the git fields)."""

    git_commit: str | None = entry(Nullable(Text("the 40-hex commit of the forgetbench code that made the run",
                                                 pattern=_GIT_COMMIT)), None)
    git_dirty: bool = entry(Flag())
    versions: _Versions = entry(Section(_Versions))
    hardware: _Hardware = entry(Section(_Hardware))
    seed: int = entry(Integer(ge=0))
    timestamp_utc: str = entry(Text())
    extra: Mapping[str, Any] = extras()

    def check_fields(self, path: str, problems: Problems) -> None:
        if self.git_commit is None:
            problems.add(f"{path}.git_commit", "expected the 40-hex commit of the forgetbench code that made the run, "
                                               "got null (run from a git checkout of forgetbench)")


def _submission_problems(raw: dict, record: RunRecord | None, cls: type[RunRecord], problems: Problems) -> None:
    known = ("schema", *keys(cls))
    for key in sorted(set(raw) - set(known)):
        problems.add(key, f"is not a field of {cls.SCHEMA} (known: {', '.join(known)})")
    if isinstance(raw.get("provenance"), dict):
        prov = read(_Provenance, raw["provenance"], problems, "provenance")
        if prov and prov.seed != raw.get("seed"):
            problems.add("provenance.seed", f"is {prov.seed!r} but the record's seed is {raw.get('seed')!r}")
    task = raw.get("task")
    if isinstance(task, dict):
        current = _task_problems(task, problems)
        if current is not None and record is not None:
            record.task_problems(current, problems)


def _task_problems(task: dict, problems: Problems) -> TaskSpec | None:
    """The task is registered, the record is of its current version and was run under exactly its protocol; returns
    the registered task when so."""
    name, version, spec = task.get("name"), task.get("version"), task.get("spec")
    if not isinstance(name, str) or not isinstance(version, int) or not isinstance(spec, dict):
        return None  # already reported
    try:
        current = load_task(name)
    except ForgetbenchError as e:
        problems.add("task.name", f"is not a known task ({e})")
        return None
    if version != current.version:
        problems.add("task.version", f"is {version} but task {name!r} is at version {current.version} "
                                     f"({current.source}); only results of the current protocol are accepted")
        return None
    try:
        resolved = TaskSpec.from_dict(spec, source="task.spec")
    except ForgetbenchError as e:
        problems.add("task.spec", f"is not a valid task ({e})")
        return None
    if (resolved.name, resolved.version) != (name, version):
        problems.add("task.spec", f"is task {resolved.name!r} version {resolved.version}, not {name!r} version "
                                  f"{version}")
        return None
    mine, theirs = resolved.measurement(), current.measurement()
    for k in dict.fromkeys([*mine, *theirs]):
        if mine.get(k) != theirs.get(k):
            problems.add(f"task.spec.{k}", f"differs from the protocol of {name!r} v{version} ({current.source}): "
                                           f"{canonical(mine.get(k), k)} instead of {canonical(theirs.get(k), k)}")
    return current
