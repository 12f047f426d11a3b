"""Task specs: a versioned fine-tune-then-measure-forgetting protocol, kept as data in ``tasks/*.yaml``.

A task names the model, the fine-tune dataset (or a sequence of them), the held-out datasets and how to evaluate
them, the training hyper-parameters, the default methods and the seeds. ``load_task`` finds a task by name or path and
validates it; every problem becomes one ``SpecError`` line that starts with ``file:line`` so the user can jump to it.
"""
from .files import load_task_text
from .lookup import ENV_TASKS_PATH, TASKS, check_names, load_task, shipped_tasks_dir, tasks_dirs
from .spec import (ANCHORS, ClassSplitSpec, EvalSpec, FinetuneSpec, LinearProbeSpec, PaperTarget, SelectionSpec,
                   SequenceSpec, TaskSpec, TrainSpec, TUNABLE, TuningSpec)

__all__ = ["ANCHORS", "ClassSplitSpec", "ENV_TASKS_PATH", "EvalSpec", "FinetuneSpec", "LinearProbeSpec", "PaperTarget",
           "SelectionSpec", "SequenceSpec", "TASKS", "TUNABLE", "TaskSpec", "TrainSpec", "TuningSpec", "check_names", "load_task",
           "load_task_text", "shipped_tasks_dir", "tasks_dirs"]
