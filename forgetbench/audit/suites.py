"""Audit suites: the held-out datasets of an audit and how to evaluate them (an ``evaluate`` section and the split
roles, exactly as in a task). ``mini`` and ``standard`` ship with the package (``forgetbench/suites/``); a suite YAML
file of the same form, or any task file (its held-out datasets and protocol), works too."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError, UnknownNameError
from ..registry import Registry
from ..schema import Problems, Section, Text, entry, internal, read
from ..tasks import EvalSpec, TaskSpec, load_task
from ..tasks.files import parse_yaml, read_text
from ..tasks.spec import spec_error

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"

#: Every suite shipped in ``forgetbench/suites/``, by name; entries are paths.
SUITES = Registry("suite")
SUITES.add_loader(lambda: [SUITES.register(p.stem, p) for p in sorted(SUITES_DIR.glob("*.yaml"))])


@dataclass(frozen=True, kw_only=True)
class Splits:
    train_split: str = entry(Text("a split name"), "train")
    val_split: str = entry(Text("a split name"), "val")
    test_split: str = entry(Text("a split name"), "test")


@dataclass(frozen=True, kw_only=True)
class Suite:
    """Held-out datasets and their evaluation: what an audit measures a tuned model on."""

    name: str | None = entry(Text("a suite name"), None)
    description: str = entry(Text("a string", allow_empty=True), "")
    splits: Splits = entry(Section(Splits), Splits())
    evaluate: EvalSpec = entry(Section(EvalSpec))
    source: str = internal("")

    @property
    def split_names(self) -> tuple[str, str, str]:
        return self.splits.train_split, self.splits.val_split, self.splits.test_split

    @classmethod
    def of_task(cls, task: TaskSpec) -> Suite:
        """A task's held-out datasets, under its evaluation protocol."""
        return cls(name=task.name, description=task.description, evaluate=task.evaluate, source=task.source,
                   splits=Splits(**dict(zip(("train_split", "val_split", "test_split"), task.finetune.splits))))

    def describe(self) -> dict:
        ev = self.evaluate
        return {"name": self.name, "source": self.source, "datasets": list(ev.datasets),
                "splits": list(self.split_names),
                "linear_probe": {"C_grid": list(ev.linear_probe.C_grid), "max_iter": ev.linear_probe.max_iter},
                "zero_shot": ev.zero_shot, "drift": list(ev.drift)}


def _suite_file(path: Path, source: str) -> Suite:
    data, lines = parse_yaml(read_text(path, source, what="suite file"), source)
    if isinstance(data, dict) and ("finetune" in data or "train" in data):
        return Suite.of_task(load_task(str(path)))  # a task file: its held-out datasets, under its protocol
    suite = read(Suite, data, Problems(raise_at=lambda at, message: spec_error(source, lines, at, message)))
    return dataclasses.replace(suite, name=suite.name or path.stem, source=source)


def load_suite(name_or_path: Any, exclude: tuple[str, ...] | list[str] = ()) -> Suite:
    """A suite by name (``mini``), from a suite or task YAML file, or of a ``TaskSpec``; ``exclude`` drops datasets
    (say, the one the model was tuned on)."""
    if isinstance(name_or_path, TaskSpec):
        suite = Suite.of_task(name_or_path)
    else:
        text = str(name_or_path)
        is_path = text.endswith((".yaml", ".yml")) or "/" in text
        try:
            path = Path(text) if is_path else Path(SUITES.get(text))
        except UnknownNameError as e:
            raise UnknownNameError(f"{e}; or give a suite or task YAML file") from None
        suite = _suite_file(path, text)
    unknown = [d for d in exclude if d not in suite.evaluate.datasets]
    if unknown:
        raise SpecError(f"--exclude {unknown[0]!r}: not in suite {suite.name!r} (it has: "
                        f"{', '.join(suite.evaluate.datasets)})")
    kept = tuple(d for d in suite.evaluate.datasets if d not in exclude)
    if not kept:
        raise SpecError(f"suite {suite.name!r}: --exclude left no dataset to evaluate")
    return dataclasses.replace(suite, evaluate=dataclasses.replace(suite.evaluate, datasets=kept))
