"""A task's run axes beyond method and seed: the fine-tuning mode (``train.mode``) and its settings
(``train.peft.*``), set on the command line (``--set train.mode=lora``) or swept (``--grid train.mode=full,lora``).

They change which runs are made, never what a task version measures (``TaskSpec.measurement`` leaves them out), so a
variant keeps the task's name and version and its records sit beside the task's own, told apart by their run ids.
"""
from __future__ import annotations

import itertools
from typing import Any

from ..errors import SpecError
from ..modes import SETTING_NAMES
from .spec import TaskSpec

#: The fields ``--set`` and a sweep's ``--grid`` may give a task.
SETTABLE = ("train.mode", *(f"train.peft.{k}" for k in SETTING_NAMES))


def is_axis(key: str) -> bool:
    return key in SETTABLE


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["train.mode=lora", "train.peft.lora_rank=8"]`` -> ``{"train.mode": "lora", "train.peft.lora_rank": 8}``."""
    from ..sweep import _scalar

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE (keys: {', '.join(SETTABLE)})")
        if key not in SETTABLE:
            raise SpecError(f"--set {item!r}: {key!r} cannot be set on the command line (accepted: "
                            f"{', '.join(SETTABLE)})")
        out[key] = _scalar(value.strip())
    return out


def with_settings(task: TaskSpec, settings: dict[str, Any]) -> TaskSpec:
    """``task`` with ``settings`` (dotted keys of ``SETTABLE``) applied, validated again (a bad value is one line)."""
    if not settings:
        return task
    spec = task.to_dict()
    for key, value in settings.items():
        node = spec
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):  # train.peft is absent (None) until something is set in it
                node[part] = {}
            node = node[part]
        node[last] = value
    shown = " ".join(f"{k}={v}" for k, v in settings.items())
    return TaskSpec.from_dict(spec, source=f"{task.source} with {shown}")


def settings_of_record(spec: dict) -> dict[str, Any]:
    """The run-axis settings a record's resolved task (``task.spec``) carries, as ``with_settings`` takes them."""
    train = spec.get("train") or {}
    out = {"train.mode": train["mode"]} if train.get("mode") else {}
    return {**out, **{f"train.peft.{k}": v for k, v in (train.get("peft") or {}).items() if v is not None}}


def variants(task: TaskSpec, grid: dict[str, tuple]) -> list[TaskSpec]:
    """One task per point of ``grid`` (dotted ``SETTABLE`` keys -> values), or ``[task]`` for an empty grid."""
    if not grid:
        return [task]
    return [with_settings(task, dict(zip(grid, point))) for point in itertools.product(*grid.values())]
