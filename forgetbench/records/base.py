"""What every result record holds, whatever its protocol: the run's identity, its method and model, its provenance.

A run is (task name, task version, method name, resolved method params, seed); its record is one JSON object on one
line of ``<results>/<task>.jsonl``. Each protocol's record type (``forgetbench.protocols``) adds its metrics to
``RunRecord``. Accuracies are percentages (0..100), deltas are points. Keys a reader does not know are kept, so a
record written by a newer forgetbench stays readable (a submission may not carry unknown top-level fields).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..errors import SpecError
from ..modes import FULL, mode_of
from ..modes import identity as mode_identity
from ..schema import Any_, Integer, Nullable, Number, Problems, Section, Text, entry, extras, to_json

FAILURES_FILE = "failures.jsonl"
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RUN_ID = re.compile(r"[0-9a-f]{16}")

SECONDS = Number(ge=0, unit="seconds")


def canonical(obj: Any, what: str) -> str:
    """Canonical JSON (sorted keys, no spaces, finite numbers only) so equal runs hash equally."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{what} is not plain finite JSON ({e}); use str/int/float/bool/None, lists and dicts") from None


def run_id(task: str, task_version: int, method: str, params: Mapping[str, Any], seed: int,
           mode: Mapping[str, Any] | None = None) -> str:
    """16 hex chars of sha256 over the canonical JSON of the run's identity.

    ``params`` must be the *resolved* parameters: ``{"alpha": 1}`` and ``{"alpha": 1.0}`` are different runs.
    ``mode`` is the fine-tuning mode and its settings (``forgetbench.modes.identity``); None (full fine-tuning)
    leaves it out, so the ids of runs without a mode are what they always were.
    """
    ident = {"task": task, "task_version": task_version, "method": method, "params": to_json(params), "seed": seed,
             **({"mode": dict(mode)} if mode is not None else {})}
    return hashlib.sha256(canonical(ident, "run identity").encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class TaskRef:
    """Which protocol was run: the task's name and version, and the resolved task (``TaskSpec.to_dict()``)."""

    name: str = entry(Text("a task name (letters, digits, '.', '_', '-', not starting with a symbol)",
                           pattern=TASK_NAME))
    version: int = entry(Integer(ge=1))
    spec: Mapping[str, Any] = entry(Any_(mapping=True))
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class MethodRef:
    """Which method, with its resolved hyper-parameters (part of the run's identity) and its citation."""

    name: str = entry(Text())
    params: Mapping[str, Any] = entry(Any_(mapping=True))
    citation: str | None = entry(Nullable(Text("a non-empty string (the paper or URL)")), None, key="reference")
    # sha256 of the file that defines the method (``forgetbench.methods.method_source``); absent in older records
    source_sha256: str | None = entry(Text("64 lowercase hex characters", pattern=re.compile("[0-9a-f]{64}")), None,
                                      omit_if_none=True)
    state: Mapping[str, Any] | None = entry(Any_(mapping=True), None, omit_if_none=True)  # scalars a method reports
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """The pre-trained model: its name and the hash of its image encoder's weights."""

    name: str = entry(Text())
    weights_sha256: str | None = entry(Nullable(Text()), None)
    notes: tuple[str, ...] | None = entry(Any_(), None, omit_if_none=True)  # metrics it could not have, and why
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class Timings:
    setup_s: float | None = entry(SECONDS, None, omit_if_none=True)
    finetune_s: float = entry(SECONDS)
    evaluate_s: float = entry(SECONDS)
    total_s: float = entry(SECONDS)
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """The fields every record kind shares. A protocol's record type sets ``SCHEMA`` and adds its metrics.

    ``accepts(raw)`` lets a record type claim only part of the records of its schema (the absent-class records are
    ``forgetbench.result/1`` records with an absent-class block); the most specific type that accepts a record
    reads it.
    """

    SCHEMA: ClassVar[str] = ""
    SKIPPED_KEYS: ClassVar[tuple[str, ...]] = ("schema",)  # the schema picks the type; it is not a field

    run_id: str = entry(Text("16 lowercase hex characters", pattern=_RUN_ID))
    status: str = entry(Text(f"'complete' (failed runs go to {FAILURES_FILE})", pattern=re.compile("complete")),
                        "complete")
    task: TaskRef = entry(Section(TaskRef))
    method: MethodRef = entry(Section(MethodRef))
    seed: int = entry(Integer(ge=0))
    model: ModelRef = entry(Section(ModelRef))
    training: Mapping[str, Any] | None = entry(Any_(mapping=True), None, omit_if_none=True)
    timings: Timings = entry(Section(Timings))
    provenance: Mapping[str, Any] = entry(Any_(mapping=True))
    extra: Mapping[str, Any] = extras()

    @classmethod
    def accepts(cls, raw: Mapping[str, Any]) -> bool:
        return True

    def check_fields(self, path: str, problems: Problems) -> None:
        """The run id must be the hash of the run's identity, so a hand-edited record cannot shadow another run."""
        try:
            expected = run_id(self.task.name, self.task.version, self.method.name, self.method.params, self.seed,
                              mode_identity(self.task.spec.get("train") or {}))
        except SpecError as e:
            problems.add("method.params", str(e))
            return
        if self.run_id != expected:
            problems.add("run_id", f"{self.run_id!r} does not match task/method/params/seed (expected {expected!r})")

    def task_problems(self, task: Any, problems: Problems) -> None:
        """What a submission must agree on with the registered task beyond its protocol (the model, by default)."""
        if self.model.name != task.model:
            problems.add("model.name", f"is {self.model.name!r} but the task's model is {task.model!r}")

    def to_json(self) -> dict[str, Any]:
        """The record as it is stored: plain JSON types, ``schema`` first."""
        return {"schema": self.SCHEMA, **to_json(self)}

    @property
    def mode(self) -> str:
        """The fine-tuning mode of the run (``full`` for records without one)."""
        return mode_of(self.task.spec.get("train") or {})

    @property
    def label(self) -> str:
        """``task method seed N``: how a run is named in messages (with its mode, when it has one)."""
        mode = "" if self.mode == FULL else f" ({self.mode})"
        return f"{self.task.name} {self.method.name}{mode} seed {self.seed}"
