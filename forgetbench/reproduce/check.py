"""What a reproduction needs before anything runs: every task's weights and datasets, all missing ones in one list."""
from __future__ import annotations

from typing import Iterable

from ..data import DATASETS, real
from ..errors import ForgetbenchError
from ..methods import METHODS
from ..models import MODELS
from ..models.specs import weights_location
from ..protocol import protocol_for
from ..tasks import check_names


def task_datasets(task) -> list[str]:
    """The datasets a task reads: those it fine-tunes on, then its held-out ones."""
    trained = [name for _, name in protocol_for(task).finetune_datasets(task)]
    return list(dict.fromkeys([*trained, *task.evaluate.datasets]))


def missing(tasks: Iterable) -> list[str]:
    """One line per missing model weight or dataset over all ``tasks`` (each named once); empty when all is here.

    An unknown name (a typo in a task) is not "missing": it raises at once, as ``forgetbench run`` does.
    """
    found: dict[str, str] = {}
    root = real.data_root_or_none()
    for task in tasks:
        check_names(task, DATASETS, MODELS, METHODS)
        if f"weights {task.model}" not in found:
            try:
                weights_location(task.model)
            except ForgetbenchError as e:
                found[f"weights {task.model}"] = str(e)
        for name in task_datasets(task):
            spec = real.by_name().get(name)
            if spec is None or f"dataset {name}" in found:
                continue  # built in (mini world, packaged sets): always here
            if root is None and not spec.system_folder:
                found[f"dataset {name}"] = (f"expected DATA_ROOT/{spec.folder} ({spec.layout}), and no data root is "
                                            f"set (--data-root, FORGETBENCH_DATA)")
                continue
            try:
                real.locate(spec)
            except ForgetbenchError as e:
                found[f"dataset {name}"] = str(e)
    return [f"{what}: {why}" for what, why in found.items()]
