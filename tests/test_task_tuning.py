"""A task's optional ``tuning`` section: where its training values came from, validated like the rest of the task."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from forgetbench.data import DATASETS
from forgetbench.errors import SpecError, UnknownNameError
from forgetbench.methods import METHODS
from forgetbench.models import MODELS
from forgetbench.tasks import TaskSpec, check_names, load_task, load_task_text


ROOT = Path(__file__).resolve().parent.parent
SRC = "tasks/x.yaml"
TUNED = """\
name: tuned
version: 4
model: mini-clip
finetune: {dataset: mini/noise}
evaluate: {datasets: [mini/shapes]}
train: {lr: 3.0e-4, batch_size: 64, epochs: 4}
tuning:
  method: ft
  seeds: [0, 1]
  rule: highest mean validation accuracy; ties within 1 point to the smaller lr
  grid: {lr: [1.0e-4, 3.0e-4, 1.0e-3], epochs: [4, 8]}
  val_acc:
    - {lr: 1.0e-4, epochs: 4, acc: 60.0}
    - {lr: 1.0e-4, epochs: 8, acc: 61.0}
    - {lr: 3.0e-4, epochs: 4, acc: 70.5}
    - {lr: 3.0e-4, epochs: 8, acc: 70.0}
    - {lr: 1.0e-3, epochs: 4, acc: 71.0}
    - {lr: 1.0e-3, epochs: 8, acc: 69.0}
seeds: [0]
"""


def edit(old: str, new: str, text: str = TUNED) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_a_tuning_section_loads_and_round_trips():
    spec = load_task_text(TUNED, SRC)
    t = spec.tuning
    assert t.method == "ft" and t.seeds == (0, 1) and dict(t.grid) == {"lr": (1e-4, 3e-4, 1e-3), "epochs": (4, 8)}
    assert len(t.val_acc) == 6 and t.val_acc[4] == {"lr": 1e-3, "epochs": 4, "acc": 71.0}
    d = spec.to_dict()
    assert json.loads(json.dumps(d))["tuning"]["grid"] == {"lr": [1e-4, 3e-4, 1e-3], "epochs": [4, 8]}
    assert TaskSpec.from_dict(d) == spec


def test_a_task_without_tuning_keeps_its_record_form():
    text = TUNED[:TUNED.index("tuning:")] + "seeds: [0]\n"
    spec = load_task_text(text, SRC)
    assert spec.tuning is None and "tuning" not in spec.to_dict()


@pytest.mark.parametrize("text,field,words", [
    (edit("{lr: [1.0e-4, 3.0e-4, 1.0e-3], epochs: [4, 8]}", "{lr: [1.0e-4, 1.0e-3], epochs: [4, 8]}"),
     "tuning.grid.lr", "train.lr is 0.0003, which is not among the values tried"),
    (edit("epochs: [4, 8]}", "epoch: [4, 8]}"), "tuning.grid.epoch", "did you mean 'epochs'"),
    (edit("epochs: [4, 8]}", "optimizer: [1, 2]}"), "tuning.grid.optimizer", "not a train field"),
    (edit("{lr: [1.0e-4, 3.0e-4, 1.0e-3], epochs: [4, 8]}", "{}"), "tuning.grid", "at least one"),
    (edit("    - {lr: 1.0e-3, epochs: 8, acc: 69.0}\n", ""), "tuning.val_acc", "5 entries for a grid of 6"),
    (edit("{lr: 1.0e-3, epochs: 8, acc: 69.0}", "{lr: 1.0e-3, epochs: 4, acc: 69.0}"), "tuning.val_acc[5]",
     "also tuning.val_acc[4]"),
    (edit("{lr: 1.0e-3, epochs: 8, acc: 69.0}", "{lr: 2.0e-3, epochs: 8, acc: 69.0}"), "tuning.val_acc[5].lr",
     "not among tuning.grid.lr"),
    (edit("{lr: 1.0e-3, epochs: 8, acc: 69.0}", "{lr: 1.0e-3, acc: 69.0}"), "tuning.val_acc[5].epochs",
     "missing required field"),
    (edit("{lr: 1.0e-3, epochs: 8, acc: 69.0}", "{lr: 1.0e-3, epochs: 8, acc: 169.0}"), "tuning.val_acc[5].acc",
     "[0, 100]"),
    (edit("{lr: 1.0e-3, epochs: 8, acc: 69.0}", "{lr: 1.0e-3, epochs: 8, wd: 0, acc: 69.0}"),
     "tuning.val_acc[5].wd", "not a field of tuning.grid"),
    (edit("  rule: highest mean validation accuracy; ties within 1 point to the smaller lr\n", ""), "tuning.rule",
     "missing required field"),
    (edit("  seeds: [0, 1]\n", "  seeds: [0, 0]\n"), "tuning.seeds[1]", "twice"),
    (edit("  method: ft\n", "  method: ft\n  chosen: 3e-4\n"), "tuning.chosen", "unknown key"),
])
def test_a_bad_tuning_section_is_one_line_naming_file_line_and_field(text, field, words):
    with pytest.raises(SpecError) as info:
        load_task_text(text, SRC)
    msg = str(info.value)
    assert msg.startswith(f"{SRC}:") and f": {field}: " in msg and words in msg and "\n" not in msg, msg


def test_the_tuned_method_must_be_a_known_method():
    spec = load_task_text(edit("  method: ft\n", "  method: fft\n"), SRC)
    with pytest.raises(UnknownNameError, match=r"tuning\.method: .*did you mean 'ft'"):
        check_names(spec, DATASETS, MODELS, METHODS)


@pytest.mark.parametrize("name", ["mini-noise", "mini-brightness", "mini-orientation"])
def test_the_headroom_tasks_carry_the_tuning_that_chose_their_learning_rate(name):
    spec = load_task(name)
    check_names(spec, DATASETS, MODELS, METHODS)
    assert spec.version >= 4 and spec.tuning is not None and spec.tuning.method == "ft"
    assert {1e-4, 3e-4} <= set(spec.tuning.grid["lr"])  # what the headroom pilot says the grid must include
    assert len(spec.tuning.seeds) >= 2
    tune = _tune_protocol()
    points = [{"values": {k: e[k] for k in spec.tuning.grid}, "val": e["acc"]} for e in spec.tuning.val_acc]
    chosen = tune.select(points, {k: list(v) for k, v in spec.tuning.grid.items()}, tolerance=1.0)
    assert all(getattr(spec.train, k) == v for k, v in chosen["values"].items())  # the written rule was followed
    assert "1 point" in spec.tuning.rule


def _tune_protocol():
    path = ROOT / "bench" / "tune_protocol.py"
    module_spec = importlib.util.spec_from_file_location("tune_protocol", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_the_rule_takes_the_best_and_sends_ties_to_the_smaller_values():
    select = _tune_protocol().select
    grid = {"lr": [1e-4, 3e-4, 1e-3]}
    pts = lambda accs: [{"values": {"lr": lr}, "val": a} for lr, a in zip(grid["lr"], accs)]  # noqa: E731
    assert select(pts([60.0, 70.0, 72.0]), grid, 1.0)["values"] == {"lr": 1e-3}  # 2 points better: the best
    assert select(pts([60.0, 71.5, 72.0]), grid, 1.0)["values"] == {"lr": 3e-4}  # within 1 point: the smaller
    assert select(pts([71.2, 71.5, 72.0]), grid, 1.0)["values"] == {"lr": 1e-4}
    assert select(pts([71.2, 71.5, 72.0]), grid, 0.0)["values"] == {"lr": 1e-3}
    # exactly 1 point below the best is a tie, also when floating point puts it 2e-14 further away
    acc = lambda correct: 100.0 * float(np.mean(np.arange(1000) < correct))  # noqa: E731  (as the script computes)
    exact = [float(np.mean([acc(775), acc(777)])), float(np.mean([acc(817), acc(814)])),
             float(np.mean([acc(828), acc(823)]))]
    assert exact[2] - exact[1] > 1.0  # the rounding this guards against
    assert select(pts(exact), grid, 1.0)["values"] == {"lr": 3e-4}
    grid2 = {"lr": [1e-4, 3e-4], "epochs": [4, 8]}
    both = [{"values": {"lr": lr, "epochs": e}, "val": a}
            for (lr, e), a in zip([(1e-4, 4), (1e-4, 8), (3e-4, 4), (3e-4, 8)], [50.0, 70.0, 69.5, 70.2])]
    assert select(both, grid2, 1.0)["values"] == {"lr": 1e-4, "epochs": 8}  # lr first, then epochs
