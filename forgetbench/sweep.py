"""Sweeps: one task x methods x seeds x a grid of method hyper-parameters, expanded into runs.

A run is identified by its run id (task, version, method, resolved hyper-parameters, seed), so a sweep is
idempotent: runs whose record is already stored are skipped, and invoking the same sweep again launches nothing.
The runs left are handed to a launcher (``forgetbench.launchers``): this machine, or Slurm through submitit.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpecError
from .methods import Method, get_method
from .modes import FULL, LR_SCALES
from .modes import identity as mode_identity
from .records import ResultStore, run_id

_KEY = re.compile(r"(?:(?P<method>[A-Za-z0-9][\w.-]*)\.)?(?P<param>[A-Za-z_]\w*)")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: ``params`` are the grid's overrides (the task's own come on top in ``run_one``)."""

    method: str  # a registered name, or the absolute path of a method file
    method_name: str
    params: dict
    seed: int
    run_id: str

    @property
    def label(self) -> str:
        grid = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.method_name}{grid} seed {self.seed}"


def _scalar(text: str) -> Any:
    """A grid value as YAML would read it: integer, float (``1e-3`` too), true/false, null, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(items: list[str] | None) -> dict[str, tuple]:
    """``["lam=0.1,1", "ldifs.alpha=1,10"]`` -> ``{"lam": (0.1, 1), "ldifs.alpha": (1, 10)}``.

    An unqualified key applies to every method of the sweep that declares it; ``method.key`` to that method only.
    """
    grid: dict[str, tuple] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise SpecError(f"--grid {item!r}: expected key=v1,v2,... (key: a hyper-parameter name, or "
                            f"method.name for one method only)")
        vals = [v.strip() for v in values.split(",")]
        if not values.strip() or any(not v for v in vals):
            raise SpecError(f"--grid {item!r}: expected a comma-separated list of values after '='")
        if key in grid:
            raise SpecError(f"--grid: {key!r} is given twice; put all its values in one list")
        grid[key] = tuple(dict.fromkeys(_scalar(v) for v in vals))  # repeated values are one run
    return grid


def _resolve_method(name: str) -> tuple[str, type[Method]]:
    """The method as a job can find it from anywhere (a file by absolute path) and its class."""
    if name.endswith(".py"):
        name = str(Path(name).expanduser().resolve())
    return name, get_method(name)


def expand(task, methods: list[str], seeds: list[int], grid: dict[str, tuple] | None = None) -> list[PlannedRun]:
    """Every (method, grid point, seed) of the sweep, each once (grid points that resolve alike are one run)."""
    grid = grid or {}
    resolved = [_resolve_method(m) for m in methods]
    names = {cls.name for _, cls in resolved}
    for key in grid:
        m = _KEY.fullmatch(key)
        method, param = m["method"], m["param"]
        if method is not None:
            if method not in names:
                raise SpecError(f"--grid {key}: method {method!r} is not in this sweep (methods: "
                                f"{', '.join(sorted(names))})")
            cls = next(c for _, c in resolved if c.name == method)
            if param not in cls.defaults:
                raise SpecError(f"--grid {key}: method {method!r} has no hyper-parameter {param!r} "
                                f"(it declares: {', '.join(sorted(cls.defaults)) or 'none'})")
        elif not any(param in cls.defaults for _, cls in resolved):
            declared = "; ".join(f"{cls.name}: {', '.join(sorted(cls.defaults)) or 'none'}" for _, cls in resolved)
            raise SpecError(f"--grid {key}: no method of this sweep declares {param!r} ({declared})")
    runs: dict[str, PlannedRun] = {}
    for method, cls in resolved:
        axes: dict[str, tuple] = {}
        for key, values in grid.items():  # unqualified first, so that method.key overrides key
            if "." not in key and key in cls.defaults:
                axes[key] = values
        for key, values in grid.items():
            m = _KEY.fullmatch(key)
            if m["method"] == cls.name:
                axes[m["param"]] = values
        for point in itertools.product(*axes.values()):
            overrides = dict(zip(axes, point))
            try:
                params = cls(**{**task.params_for(cls.name), **overrides}).params
            except SpecError as e:
                raise SpecError(f"--grid: {e}") from None
            for seed in seeds:
                rid = run_id(task.name, task.version, cls.name, params, seed, mode_identity(task.train))
                runs.setdefault(rid, PlannedRun(method, cls.name, overrides, seed, rid))
    return list(runs.values())


def tradeoff_grid(methods: list[str], mode: str = FULL) -> dict[str, tuple]:
    """The trade-off grid of ``methods``: each one's declared strength knob over its default grid (``--grid`` form,
    ``method.param``); a method without a knob runs once, at the task's settings. In a fine-tuning ``mode`` other
    than full, a learning-rate knob (``lr_scale``) takes the mode's own grid (``forgetbench.modes.LR_SCALES``)."""
    grid = {}
    for method in methods:
        cls = _resolve_method(method)[1]
        if cls.strength is not None:
            values = cls.strength.weakest_first()
            if mode != FULL and cls.strength.param == "lr_scale":
                values = LR_SCALES[mode]
            grid[f"{cls.name}.{cls.strength.param}"] = values
    return grid


def shared_finetunes(runs: list[PlannedRun]) -> list[list[PlannedRun]]:
    """The runs grouped by the fine-tune they can share: the values of a post-hoc knob (``Strength.post_hoc``, as
    WiSE-FT's alpha) of one method, seed and other params are one fine-tune evaluated several times."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        knob = get_method(run.method).strength
        if knob is not None and knob.post_hoc and knob.param in run.params:
            rest = {k: v for k, v in run.params.items() if k != knob.param}
            key: tuple = (run.method, run.seed, json.dumps(rest, sort_keys=True))
        else:
            key = (run.run_id,)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def plan(task, runs: list[PlannedRun], store: ResultStore) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(runs to launch, runs already recorded)."""
    stored = store.run_ids(task.name)
    return [r for r in runs if r.run_id not in stored], [r for r in runs if r.run_id in stored]
