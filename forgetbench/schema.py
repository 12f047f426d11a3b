"""Typed data read from JSON or YAML: one reader for task files, result records and methods' hyper-parameters.

A schema is a frozen dataclass whose fields say how their value is checked (``entry(check, default)``); ``read``
turns parsed JSON/YAML into an instance, ``to_json`` turns an instance back into plain JSON types. Every problem is
``(path, message)`` with a dotted path (``train.lr``, ``metrics.heldout.mini/colours.delta_lp``, ``seeds[1]``), and
is either collected (result records: every problem at once) or raised at once (task files, whose problems each carry
their file and line). Messages say what was expected and what was found, in one line.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
import reprlib
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from .errors import SpecError

INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "INVALID", "__bool__": lambda self: False})()

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 60, 60, 2, 5, 4


# ----------------------------------------------------------------------------------------------------- words

def show(v: Any) -> str:
    """A short one-line rendering of a user's value, in YAML/JSON words where Python's would mislead."""
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if v is None:
        return "null (empty)"
    return _REPR.repr(v)


def join(path: str, key: Any) -> str:
    """``path.key``; keys that are not plain words (dots, spaces, control characters) are quoted."""
    key = key if isinstance(key, str) and re.fullmatch(r"[\w/+-]+", key) else _REPR.repr(key)
    return f"{path}.{key}" if path else key


def hint(value: Any, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6) if isinstance(value, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


class Problems:
    """The problems found so far. With ``raise_at`` the first one is raised at once as ``raise_at(path, message)``."""

    def __init__(self, raise_at: Callable[[str, str], Exception] | None = None):
        self.items: list[tuple[str, str]] = []
        self.raise_at = raise_at

    def add(self, path: str, message: str) -> Any:
        """Record a problem; returns INVALID so that a check can ``return problems.add(...)``."""
        if self.raise_at is not None:
            raise self.raise_at(path, message)
        self.items.append((path, message))
        return INVALID

    def __len__(self) -> int:
        return len(self.items)


# ----------------------------------------------------------------------------------------------------- checks

class Check:
    """Checks one value: returns it (converted where the check says so) or INVALID after recording a problem."""

    what = "a value"

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        raise NotImplementedError

    def expected(self, v: Any, path: str, problems: Problems, what: str | None = None) -> Any:
        return problems.add(path, f"expected {what or self.what}, got {show(v)}")


def _range(lo: Any, hi: Any, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


class Integer(Check):
    """An integer (a boolean is not one: ``epochs: true`` is a typo, not 1) within the bounds."""

    def __init__(self, ge: int | None = None, le: int | None = None):
        self.ge, self.le = ge, le
        self.what = f"an integer {_range(ge, le)}".rstrip()

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
        if not ok or (self.ge is not None and v < self.ge) or (self.le is not None and v > self.le):
            return self.expected(v, path, problems)
        return int(v)


class Number(Check):
    """A finite real number (integers accepted, booleans not) within the bounds; ``unit`` is said in the message.

    ``coerce`` returns it as a float (task files: ``lr: 1`` means 1.0); otherwise it is returned as given, so that a
    record read and written again is the same JSON.
    """

    def __init__(self, gt: float | None = None, ge: float | None = None, lt: float | None = None,
                 le: float | None = None, unit: str | None = None, coerce: bool = False, what: str | None = None):
        self.lo, self.lo_open = (gt, True) if gt is not None else (ge, False)
        self.hi, self.hi_open = (lt, True) if lt is not None else (le, False)
        self.coerce = coerce
        bounds = _range(self.lo, self.hi if self.hi != math.inf else None, self.lo_open, self.hi_open)
        self.what = what or f"a number {bounds}".rstrip() + (f" ({unit})" if unit else "")

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        x = None
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            try:
                x = float(v)
            except OverflowError:  # a huge integer
                x = None
        if x is None or not math.isfinite(x) or not self._inside(x):
            finite = x is None or math.isfinite(x)
            return problems.add(path, f"expected {self.what}, got {show(v)}{'' if finite else ' (not finite)'}")
        return x if self.coerce else v

    def _inside(self, x: float) -> bool:
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))


class Text(Check):
    """A string: non-empty (not only blanks) unless ``allow_empty``, matching ``pattern`` when given."""

    def __init__(self, what: str = "a non-empty string", pattern: re.Pattern | None = None,
                 allow_empty: bool = False):
        self.what, self.pattern, self.allow_empty = what, pattern, allow_empty

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        if not isinstance(v, str) or (not self.allow_empty and not v.strip()) or \
                (self.pattern is not None and not self.pattern.fullmatch(v)):
            return self.expected(v, path, problems)
        return v


class Flag(Check):
    what = "true or false"

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        return v if isinstance(v, bool) else self.expected(v, path, problems)


class Choice(Check):
    """One of ``choices`` (a tuple, or a function giving them when the check runs: registries grow)."""

    def __init__(self, choices: tuple[str, ...] | Callable[[], Iterable[str]]):
        self._choices = choices

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._choices() if callable(self._choices) else self._choices)

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        choices = self.choices
        if not isinstance(v, str) or v not in choices:
            return problems.add(path, f"expected one of {', '.join(choices)}, got {show(v)}{hint(v, choices)}")
        return v


class Nullable(Check):
    """``null`` or what ``check`` accepts."""

    def __init__(self, check: Check):
        self.check = check
        self.what = f"{check.what} or null"

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        if v is None:
            return None
        if isinstance(self.check, (Integer, Number)):  # say that null would do too
            return self.check(v, path, problems) if self._ok(v) else self.expected(v, path, problems)
        return self.check(v, path, problems)

    def _ok(self, v: Any) -> bool:
        return self.check(v, "", Problems()) is not INVALID


class Any_(Check):
    """Any JSON value, kept as it is (free-form parts of a record: params, provenance, ...); ``mapping`` asks for an
    object."""

    def __init__(self, mapping: bool = False):
        self.mapping = mapping
        self.what = "a mapping" if mapping else "a value"

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        if self.mapping and not isinstance(v, dict):
            return self.expected(v, path, problems)
        return v


class ListOf(Check):
    """A list of items that ``item`` accepts, returned as a tuple; ``distinct`` refuses an item listed twice."""

    def __init__(self, item: Check, nonempty: bool = True, distinct: bool = True, size: int | None = None):
        self.item, self.nonempty, self.distinct, self.size = item, nonempty, distinct, size
        self.what = f"a list of {size} items" if size is not None else \
            f"a {'non-empty ' if nonempty else ''}list"

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        if not isinstance(v, (list, tuple)) or (self.nonempty and not v) or \
                (self.size is not None and len(v) != self.size):
            return self.expected(v, path, problems)
        out: list = []
        ok = True
        for i, x in enumerate(v):
            x = self.item(x, f"{path}[{i}]", problems)
            if x is INVALID:
                ok = False
            elif self.distinct and x in out:
                problems.add(f"{path}[{i}]", f"{show(x)} is listed twice (also {path}[{out.index(x)}])")
                ok = False
            out.append(x)
        return tuple(out) if ok else INVALID


class MapOf(Check):
    """A mapping with string keys whose values ``value`` accepts; returned read-only."""

    what = "a mapping"

    def __init__(self, value: Check, key: Check | None = None):
        self.value, self.key = value, key

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        if not isinstance(v, Mapping):
            return self.expected(v, path, problems)
        out = {}
        for key, x in v.items():
            ok = _string_key(key, path, problems) and (self.key is None or
                                                       self.key(key, join(path, key), problems) is not INVALID)
            out[key] = self.value(x, join(path, key), problems) if ok else INVALID
        return INVALID if any(x is INVALID for x in out.values()) else MappingProxyType(out)


class Section(Check):
    """A mapping read into the dataclass ``cls``: each field from its key (``entry(key=...)``), by its check.

    Unknown keys are refused, with the accepted ones listed, unless ``cls`` has an ``extras()`` field, which keeps
    them (a record written by a newer version stays readable). A missing key without a default is a problem. After
    its fields, ``cls.check_fields(self, path, problems)`` (when defined) checks how they fit together.
    """

    def __init__(self, cls: type):
        self.cls = cls

    @property
    def what(self) -> str:
        return f"a mapping with keys {', '.join(keys(self.cls))}"

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        if not isinstance(v, Mapping):
            what = f"expected {self.what}, got {show(v)}"
            return problems.add(path, what if path else f"the top level must be a mapping ({what})")
        by_key = {_key(f): f for f in _fields(self.cls)}
        extra_field = next((f for f in dataclasses.fields(self.cls) if f.metadata.get("extras")), None)
        skipped = getattr(self.cls, "SKIPPED_KEYS", ())
        before = len(problems)
        extra: dict[str, Any] = {}
        for key in v:  # first the keys: unknown ones, then missing ones
            if not _string_key(key, path, problems) or key in by_key or key in skipped:
                continue
            if extra_field is not None:
                extra[key] = v[key]
            else:
                accepted = sorted(by_key)
                problems.add(join(path, key), f"unknown key{hint(key, accepted)} (accepted: {', '.join(accepted)})")
        for key, f in by_key.items():
            if key not in v and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.add(join(path, key), "missing required field")
        kw = {f.name: f.metadata["check"](v[key], join(path, key), problems) for key, f in by_key.items() if key in v}
        if len(problems) > before:
            return INVALID
        if extra_field is not None:
            kw[extra_field.name] = MappingProxyType(extra)
        obj = self.cls(**kw)
        check = getattr(obj, "check_fields", None)
        if check is not None:
            before = len(problems)
            check(path, problems)
            if len(problems) > before:
                return INVALID
        return obj


def _string_key(key: Any, path: str, problems: Problems) -> bool:
    if isinstance(key, str):
        return True
    problems.add(join(path, key), f"keys must be strings, got {show(key)}")
    return False


class Custom(Check):
    """A check written as a function ``(value, path, problems) -> value or INVALID``."""

    def __init__(self, fn: Callable[[Any, str, Problems], Any], what: str = "a value"):
        self.fn, self.what = fn, what

    def __call__(self, v: Any, path: str, problems: Problems) -> Any:
        return self.fn(v, path, problems)


# ----------------------------------------------------------------------------------------------------- fields

def entry(check: Check, default: Any = dataclasses.MISSING, *, key: str | None = None, omit_if_none: bool = False,
          factory: Callable[[], Any] | None = None) -> Any:
    """A schema field: its ``check``, its ``default`` (none: required), the ``key`` it has in the data when that
    differs from the field's name, and whether ``to_json`` leaves it out when it is None (an optional section that
    older records do not have)."""
    metadata = {"check": check, "key": key, "omit_if_none": omit_if_none}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def extras() -> Any:
    """The field that keeps the keys a schema does not know (written back as they came)."""
    return dataclasses.field(default_factory=lambda: MappingProxyType({}), compare=False,
                             metadata={"extras": True})


def internal(default: Any = None, factory: Callable[[], Any] | None = None) -> Any:
    """A field that is not data (where the data came from): neither read, nor written, nor compared."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, compare=False, repr=False, metadata={"internal": True})
    return dataclasses.field(default=default, compare=False, repr=False, metadata={"internal": True})


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def keys(cls: type) -> tuple[str, ...]:
    """The keys of a schema, in declaration order."""
    return tuple(_key(f) for f in _fields(cls))


def read(cls: type, data: Any, problems: Problems, path: str = "") -> Any:
    """``data`` read into the schema ``cls``, or INVALID (the problems are in ``problems``)."""
    return Section(cls)(data, path, problems)


def from_json(cls: type, data: Any, what: str) -> Any:
    """``data`` read into ``cls``, or a ``SpecError`` naming ``what`` and the first problem (data this program wrote
    itself, such as the state in a checkpoint: a problem there is a bug, not a user's mistake)."""
    return read(cls, data, Problems(raise_at=lambda path, message: SpecError(f"{what}: {path}: {message}")))


def to_json(x: Any) -> Any:
    """Schema instances, mappings and tuples as plain JSON types; extras come back as they were read."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        out = {}
        for f in dataclasses.fields(x):
            value = getattr(x, f.name)
            if f.metadata.get("extras"):
                out.update({k: to_json(v) for k, v in value.items()})
            elif "check" in f.metadata and not (f.metadata.get("omit_if_none") and value is None):
                out[_key(f)] = to_json(value)
        return out
    if isinstance(x, Mapping):
        return {k: to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    return x
