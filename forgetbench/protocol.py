"""The Protocol noun: what a task asks to be run and measured, each one registered class that owns all of it.

A protocol (plain fine-tune, absent classes, a sequence of fine-tunes, ...) owns the checks a task of its kind needs
beyond the schema, its run (``run(request) -> record``), its record type, its leaderboard table, its one-line summary
of a run and its figures. Everything else -- the task loader, the runner, the command line, the leaderboard -- asks
the registry and never looks at the kind of a task itself.

A task names its protocol with ``protocol:``; without it, a protocol that claims the task's sections takes it (a
``sequence`` section, ``finetune.seen_classes``), else the plain fine-tune. A new protocol is one module with one
``@register_protocol`` class (and its record type); the built-in ones (``forgetbench/protocols/``) are imported on
first use.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Iterable

from .errors import SpecError
from .registry import Registry
from .schema import Problems

#: The protocol of a task that neither names one nor has a section another protocol claims.
DEFAULT = "finetune"
_BUILT_IN = ("finetune", "absent", "sequence", "prompt_tuning")

#: Every protocol, by name; entries are classes, in registration order (``entries()``).
PROTOCOLS = Registry("protocol")
PROTOCOLS.add_loader(lambda: [importlib.import_module(f"forgetbench.protocols.{name}") for name in _BUILT_IN])


class Protocol:
    """How one kind of task is run, recorded, ranked and summarised. Subclasses set the class attributes and
    override what differs; instances hold no state."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    record_type: ClassVar[type]  # a dataclass of forgetbench.records.RunRecord
    #: the figures ``forgetbench plot KIND`` draws from this protocol's records
    figures: ClassVar[tuple[str, ...]] = ()
    #: how a run may be executed beyond the plain way (``forgetbench run`` flags; see ``check_execution``)
    execution_options: ClassVar[frozenset[str]] = frozenset()

    # ----- tasks
    def claims(self, task: Any) -> bool:
        """Whether a task that names no protocol is this protocol's (by a section only it uses)."""
        return False

    def finetune_datasets(self, task: Any) -> list[tuple[str, str]]:
        """(field path, dataset name) of every dataset the task fine-tunes on."""
        return []

    def check_task(self, task: Any, problems: Problems) -> None:
        """What a task of this protocol needs beyond its schema. By default: no held-out dataset is trained on."""
        trained = {name: path for path, name in self.finetune_datasets(task)}
        for i, name in enumerate(task.evaluate.datasets):
            if name in trained:
                problems.add(f"evaluate.datasets[{i}]", f"{name!r} is a fine-tune dataset ({trained[name]}); "
                                                        f"held-out datasets must differ")

    def check_names(self, task: Any, datasets: Registry) -> None:
        """Names the task uses beyond the registries' (class names, say); raise a ``SpecError`` at the field."""

    def check_method(self, method: type) -> None:
        """Refuse, before any work, a method written for another protocol (its class names it in ``protocol``)."""
        own = getattr(method, "protocol", None)
        if own is not None and own != self.name:
            raise SpecError(f"method {method.name!r} runs under the {own} protocol only; a {self.name} task cannot "
                            f"run it")

    def check_execution(self, options: dict[str, Any]) -> None:
        """Refuse execution options (checkpoints, micro-batches, ...) this protocol does not honour yet."""
        for option, value in options.items():
            if option not in self.execution_options:
                raise SpecError(f"--{option.replace('_', '-')} is not supported for {self.name} tasks yet; run "
                                f"without it (given: {value!r})")

    def describe(self, task: Any) -> str:
        """What a run of the task fine-tunes, in a few words (the first line ``forgetbench run`` prints)."""
        return ", ".join(name for _, name in self.finetune_datasets(task))

    # ----- runs
    def run(self, request: Any) -> Any:
        """Run ``request`` (task, method, seed, ...) and return its record (None on the non-main processes)."""
        raise NotImplementedError

    def run_many(self, request: Any, variants: list[tuple[dict, str]]) -> Iterable[Any]:
        """One record per (params, run id) of ``variants``, which differ in a post-hoc knob only; a protocol whose
        runs can share one fine-tune for all of them overrides this (by default each is run on its own)."""
        for params, rid in variants:
            yield self.run(replace(request, params=params, run_id=rid))

    def summary_line(self, record: Any) -> str:
        """One line of a finished run's main numbers."""
        raise NotImplementedError

    # ----- results
    def board(self, task: str, version: int, records: list, older: str | None) -> Any:
        """The leaderboard table (``forgetbench.report.board.Board``) of one task version's records."""
        raise NotImplementedError

    def plot(self, kind: str, records: Iterable[Any], out: Path, **options: Any) -> list[Path]:
        """Draw figure ``kind`` (one of ``figures``) from the records; returns the files written."""
        raise NotImplementedError


def register_protocol(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: ``@register_protocol`` adds a Protocol subclass to the registry under its ``name``."""
    return PROTOCOLS.register_named(cls)


def protocol_for(task: Any) -> Protocol:
    """The protocol of ``task``: the one it names, else the one that claims it, else the plain fine-tune."""
    if task.protocol is not None:
        return PROTOCOLS.get(task.protocol)()
    claimants = [cls for cls in PROTOCOLS.entries() if cls.name != DEFAULT and cls().claims(task)]
    if len(claimants) > 1:
        raise SpecError(f"task {task.name!r} is claimed by the protocols {', '.join(c.name for c in claimants)}; "
                        f"name one with `protocol:`")
    return (claimants[0] if claimants else PROTOCOLS.get(DEFAULT))()


def record_types() -> list[type]:
    """The record type of every protocol, in registration order (a type shared by several is listed once)."""
    return list(dict.fromkeys(cls.record_type for cls in PROTOCOLS.entries()))


def protocol_of(record_type: type) -> Protocol:
    """The protocol whose runs write records of ``record_type``."""
    for cls in PROTOCOLS.entries():
        if cls.record_type is record_type:
            return cls()
    raise SpecError(f"no protocol writes {record_type.__name__} records")


def figure_protocol(kind: str) -> Protocol:
    """The protocol that draws figure ``kind``."""
    for cls in PROTOCOLS.entries():
        if kind in cls.figures:
            return cls()
    raise SpecError(f"unknown figure {kind!r} (known: {', '.join(figure_kinds())})")


def figure_kinds() -> list[str]:
    return [kind for cls in PROTOCOLS.entries() for kind in cls.figures]
