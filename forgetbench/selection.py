"""The selection rule of a task's ``selection`` section: each method's setting at matched gain, from validation only.

Per method, the settings of its strength sweep (``Method.strength``) are compared on their mean target *validation*
accuracy (``metrics.target.acc_val``) over the sweep's seeds; the reference (``ft`` at the task's training
hyper-parameters) sets the bar. A method's selected setting is the strongest one (the one that moves the model least)
whose mean is within ``within`` points of the reference's; when none is, the one closest to the bar, marked as not
matched. Nothing here reads a test metric: the test numbers of the selected setting are what the leaderboard reports.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import SpecError
from .methods import get_method
from .modes import entry_label, split_label


@dataclass(frozen=True)
class Selected:
    """One method's selected setting: its resolved params, its mean validation accuracy over ``seeds``, and whether
    it is within the bar (``matched``)."""

    method: str
    params: dict
    val_acc: float
    seeds: tuple[int, ...]
    matched: bool


def sweep_seeds(task: Any) -> tuple[int, ...]:
    """The seeds of a trade-off sweep: the task's first seed (every grid point runs once)."""
    return tuple(task.seeds[:1])


def selected_seeds(task: Any) -> list[int]:
    """The ``selection.seeds`` seeds every selected setting runs: the sweep's, then the task's, then the next
    integers."""
    want = task.selection.seeds
    seeds = list(dict.fromkeys([*sweep_seeds(task), *task.seeds]))
    nxt = max(seeds, default=-1) + 1
    while len(seeds) < want:
        seeds.append(nxt)
        nxt += 1
    return seeds[:want]


def task_params(task: Any, method: str) -> dict:
    """The method's resolved params at the task's own settings (its defaults under the task's overrides)."""
    return get_method(method).check_params(task.params_for(method))


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _validation_means(records: Iterable[Any], seeds: tuple[int, ...]) -> dict[tuple[str, str], tuple[dict, float]]:
    """(method label, params key) -> (params, mean target validation accuracy over the records of ``seeds``); the
    label of a run in a fine-tuning mode other than full names its mode (``ft (lora)``)."""
    groups: dict[tuple[str, str], list] = {}
    for rec in records:
        if rec.seed not in seeds:
            continue
        val = rec.metrics.target.acc_val
        if val is None:
            raise SpecError(f"run {rec.run_id} ({rec.method.name}, seed {rec.seed}) has no target validation "
                            f"accuracy (metrics.target.acc_val): it predates selection; rerun it")
        label = entry_label(rec.method.name, rec.mode)  # a method in each fine-tuning mode is selected on its own
        groups.setdefault((label, _key(dict(rec.method.params))), []).append((dict(rec.method.params), val))
    return {k: (v[0][0], math.fsum(x for _, x in v) / len(v)) for k, v in groups.items()}


def select(task: Any, records: Iterable[Any]) -> dict[str, Selected]:
    """Each method's selected setting under ``task.selection``, from the records of the sweep's seeds, keyed by the
    method's label (``ft``; ``ft (lora)`` in a fine-tuning mode, selected against the same bar). Reads only
    ``method``, ``seed``, ``run_id``, the mode and ``metrics.target.acc_val`` of each record."""
    rule = task.selection
    if rule is None:
        raise SpecError(f"task {task.name!r} has no selection section: nothing says how to choose a setting")
    seeds = sweep_seeds(task)
    means = _validation_means(records, seeds)
    ref_key = (rule.reference, _key(task_params(task, rule.reference)))
    if ref_key not in means:
        raise SpecError(f"no record of the reference {rule.reference!r} at the task's settings with seed(s) "
                        f"{', '.join(map(str, seeds))}: run the sweep first (forgetbench sweep {task.name} --tradeoff)")
    bar = means[ref_key][1] - rule.within
    out = {}
    for method in sorted({m for m, _ in means}):
        settings = [(params, val) for (m, _), (params, val) in sorted(means.items()) if m == method]
        cls = get_method(split_label(method)[0])
        strength = cls.strength
        within = [(p, v) for p, v in settings if v >= bar - 1e-9]  # exactly `within` points below is in
        if within:
            if strength is None:
                params, val = max(within, key=lambda pv: pv[1])
            else:
                knob_of = lambda p: p.get(strength.param, cls.defaults[strength.param])  # noqa: E731
                knob = strength.strongest([knob_of(p) for p, _ in within])
                params, val = next((p, v) for p, v in within if knob_of(p) == knob)
        else:
            params, val = max(settings, key=lambda pv: pv[1])  # nothing reaches the bar: the closest
        out[method] = Selected(method, params, val, seeds, matched=bool(within))
    return out
