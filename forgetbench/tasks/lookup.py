"""Finding tasks: by name in the task directories (the shipped task files, then ``$FORGETBENCH_TASKS_PATH``) or by
path, and checking that every name a task uses is registered."""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

from ..protocol import protocol_for
from ..errors import SpecError, UnknownNameError
from ..registry import Registry
from ..schema import join
from .files import load_task_text, read_text
from .spec import TaskSpec

ENV_TASKS_PATH = "FORGETBENCH_TASKS_PATH"
#: The task files that ship with forgetbench: ``tasks/`` of the source tree, installed as ``forgetbench.task_files``.
SHIPPED_TASKS = "forgetbench.task_files"


def shipped_tasks_dir() -> Path | None:
    """Where the shipped task files are (None when the package was not installed, so they cannot be found)."""
    try:
        return Path(str(importlib.resources.files(SHIPPED_TASKS)))
    except ModuleNotFoundError:
        return None


def tasks_dirs() -> list[Path]:
    """The directories searched for ``*.yaml`` tasks: the shipped ones, then ``$FORGETBENCH_TASKS_PATH``."""
    shipped = shipped_tasks_dir()
    dirs = [shipped] if shipped is not None else []
    for entry in os.environ.get(ENV_TASKS_PATH, "").split(os.pathsep):
        if entry.strip():
            d = Path(entry).expanduser()
            if d not in dirs:
                dirs.append(d)
    return dirs


class _TaskRegistry(Registry):
    """Task name -> YAML path, rescanned whenever ``tasks_dirs()`` changes (e.g. the env var is set later)."""

    def __init__(self) -> None:
        super().__init__("task")
        self._scanned: list[Path] | None = None
        self._found: list[str] = []

    def _load(self) -> None:
        dirs = tasks_dirs()
        if dirs != self._scanned:
            for name in self._found:  # keep anything registered by hand
                self._items.pop(name, None)
            self._found = []
            self.add_loader(lambda: self._scan(dirs))
        super()._load()

    def _scan(self, dirs: list[Path]) -> None:
        where: dict[str, Path] = {}
        for d in dirs:
            if not d.is_dir():
                raise SpecError(f"{ENV_TASKS_PATH}: {str(d)!r} is not a directory (expected directories of task "
                                f"YAML files, separated by {os.pathsep!r})")
            for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
                if path.stem in where:
                    raise SpecError(f"{path}: task {path.stem!r} is also defined in {where[path.stem]}; "
                                    "rename one of them")
                where[path.stem] = path
        for name, path in where.items():
            self.register(name, path)
            self._found.append(name)
        self._scanned = dirs  # only after success, so a failed scan is retried (and fails loudly) next time


#: Every task found in ``tasks_dirs()``, by name; entries are paths, parsed by ``load_task``.
TASKS: Registry = _TaskRegistry()


def _looks_like_path(s: str) -> bool:
    return s.endswith((".yaml", ".yml")) or os.sep in s or bool(os.altsep and os.altsep in s)


def _load_file(path: Path, source: str) -> TaskSpec:
    spec = load_task_text(read_text(path, source), source)
    # inside a task directory the file name is the task's name: `forgetbench run mini-shapes` must find it
    if path.resolve().parent in {d.resolve() for d in tasks_dirs()} and spec.name != path.stem:
        raise spec.error("name", f"{spec.name!r} does not match the file name {path.name!r} (tasks in a task "
                                 f"directory must be named after their file: {path.stem!r})")
    return spec


def load_task(name_or_path: str) -> TaskSpec:
    """Load a task by registry name (``mini-shapes``) or by path (``my/task.yaml``), validated.

    Raises ``UnknownNameError`` (with suggestions) for an unknown name and ``SpecError`` for a bad file.
    """
    if _looks_like_path(name_or_path):
        return _load_file(Path(name_or_path).expanduser(), name_or_path)
    path = TASKS.get(name_or_path)
    return _load_file(Path(path), str(path))


def check_names(spec: TaskSpec, datasets: Any, models: Any, methods: Any) -> None:
    """Check every name in ``spec`` exists in its registry, and the method overrides are accepted.

    Unknown names raise ``UnknownNameError`` with the registry's suggestions, prefixed by the spec's source and the
    field; a method's ``check_params(params)`` (when it has one) raises ``SpecError``, prefixed the same way. The
    task's protocol checks what else it names (the seen classes of an absent-class task).
    """
    protocol = protocol_for(spec)
    checks: list[tuple[str, str, Any]] = [("model", spec.model, models)]
    checks += [(path, name, datasets) for path, name in protocol.finetune_datasets(spec)]
    checks += [(f"evaluate.datasets[{i}]", d, datasets) for i, d in enumerate(spec.evaluate.datasets)]
    checks += [(f"methods[{i}]", m, methods) for i, m in enumerate(spec.methods)]
    checks += [(join("method_params", m), m, methods) for m in spec.method_params]
    checks += [("tuning.method", spec.tuning.method, methods)] if spec.tuning is not None else []
    checks += [("selection.reference", spec.selection.reference, methods)] if spec.selection is not None else []
    for path, name, registry in checks:
        try:
            registry.get(name)
        except UnknownNameError as e:
            hint = " (a method defined in a .py file is known once that file is loaded: name it in --methods)" \
                if path.startswith("method_params") else ""
            raise UnknownNameError(f"{spec.where(path)}: {path}: {e}{hint}") from e
    protocol.check_names(spec, datasets)
    for method in spec.method_params:
        check = getattr(methods.get(method), "check_params", None)
        if check is None:
            continue
        path = join("method_params", method)
        try:
            check(spec.params_for(method))
        except SpecError as e:
            raise SpecError(f"{spec.where(path)}: {path}: {e}") from e
