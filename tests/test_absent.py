"""The absent-class protocol end to end on tiny datasets: schema, seen view, head, record, CLI."""
import re

import numpy as np
import pytest
import torch

from forgetbench.cli import main
from forgetbench.data import DATASETS, get_dataset
from forgetbench.errors import SpecError
from forgetbench.evaluate.evaluation import Evaluation, FrozenModel
from forgetbench.evaluate.probe import zeroshot_weights
from forgetbench.heads import initial_head
from forgetbench.methods import METHODS
from forgetbench.models import MODELS
from forgetbench.protocol import protocol_for
from forgetbench.protocols.absent import seen_mask
from forgetbench.records import parse_record
from forgetbench.run import run_one
from forgetbench.tasks import TaskSpec, check_names, load_task_text

from pipeline_helpers import tiny_task

SEEN = ["circle", "square", "triangle", "diamond"]  # 4 of test/shapes' 8 classes

ABSENT_YAML = """\
name: tiny-absent
version: 1
model: mini-clip
finetune:
  dataset: test/shapes
  seen_classes: [circle, square, triangle, diamond]
evaluate:
  datasets: []
  linear_probe: {C_grid: [1.0, 10.0]}
train: {lr: 1.0e-3, batch_size: 32, steps: 3, warmup_steps: 1, grad_clip: 1.0}
methods: [ft]
seeds: [0]
"""


def absent_task(steps=3, seen=SEEN):
    d = tiny_task(steps=steps, drift=()).to_dict()
    d["finetune"]["seen_classes"] = list(seen)
    d["evaluate"]["datasets"] = []
    return TaskSpec.from_dict(d)


def test_seen_classes_are_checked_against_the_dataset():
    spec = load_task_text(ABSENT_YAML.replace("triangle, diamond", "triangel, diamond"), "tasks/a.yaml")
    with pytest.raises(SpecError) as info:
        check_names(spec, DATASETS, MODELS, METHODS)
    assert str(info.value).startswith("tasks/a.yaml:6: finetune.seen_classes[2]: 'triangel' is not a class of "
                                      "'test/shapes'; did you mean 'triangle'?")
    everything = ", ".join(get_dataset("test/shapes").classnames)
    with pytest.raises(SpecError, match="none would be absent"):
        check_names(load_task_text(ABSENT_YAML.replace("circle, square, triangle, diamond", everything), "a.yaml"),
                    DATASETS, MODELS, METHODS)
    with pytest.raises(SpecError, match="a.yaml:6: finetune.seen_classes: expected at least two seen classes"):
        load_task_text(ABSENT_YAML.replace("[circle, square, triangle, diamond]", "[circle]"), "a.yaml")


def test_the_fine_tune_sees_only_seen_classes_with_their_original_labels():
    task, ds = absent_task(), get_dataset("test/shapes")
    mask = seen_mask(task, ds)
    assert [ds.classnames[i] for i in np.flatnonzero(mask)] == SEEN
    view = protocol_for(task).training_view(task, ds)
    full = ds.labels("train")
    assert view.labels("train").tolist() == [y for y in full if mask[y]]
    assert view.classnames == ds.classnames  # the head still spans every class


def test_a_probe_head_keeps_zero_shot_rows_for_absent_classes():
    task, ds = absent_task(), get_dataset("test/shapes")
    ref = FrozenModel.load(task.model, "cpu")
    text = zeroshot_weights(ref.model, ds)
    head = initial_head("linear-probe", Evaluation(task.evaluate, task.finetune.splits, ref),
                        protocol_for(task).training_view(task, ds), text)
    mask = seen_mask(task, ds)
    zeroshot = torch.from_numpy(text).float() * ref.model.logit_scale
    assert torch.equal(head.weight[~torch.from_numpy(mask)], zeroshot[~mask])
    assert not torch.equal(head.weight[torch.from_numpy(mask)], zeroshot[mask])  # fitted by the probe
    assert (head.bias[~torch.from_numpy(mask)] == 0).all()


def test_zero_steps_give_the_pre_trained_numbers():
    record = parse_record(run_one(absent_task(steps=0), "ft", 0, progress=False).to_json()).to_json()  # valid
    absent = record["metrics"]["absent"]
    assert absent["seen_classes"] == SEEN
    reference = absent.pop("reference")
    absent.pop("seen_classes")
    assert absent == reference  # same encoder, same zero-shot head: every number identical
    assert record["metrics"]["target"]["acc"] == absent["acc"]["all_all"]
    record["metrics"]["absent"].update(reference=reference, ausuc=1.5)
    with pytest.raises(SpecError, match=r"metrics.absent.ausuc: expected a number in \[0, 1\]"):
        parse_record(record)


def test_the_calibrate_method_equals_fine_tuning_plus_the_calibration_of_the_evaluation():
    ft = run_one(absent_task(steps=4), "ft", 0, progress=False).to_json()["metrics"]["absent"]
    cal = run_one(absent_task(steps=4), "calibrate", 0, progress=False).to_json()
    assert cal["method"]["state"]["calibrate_gamma"] == pytest.approx(ft["gamma"], rel=1e-5)
    assert cal["metrics"]["absent"]["acc"] == pytest.approx(ft["calibrated"])
    assert cal["metrics"]["absent"]["ausuc"] == pytest.approx(ft["ausuc"])  # a constant bias moves along the curve
    assert abs(cal["metrics"]["absent"]["gamma"]) < 1e-4  # nothing left to calibrate


def test_cli_runs_and_plots_an_absent_task(tmp_path, capsys):
    task_file = tmp_path / "tiny-absent.yaml"
    task_file.write_text(ABSENT_YAML)
    results = tmp_path / "results"
    assert main(["run", str(task_file), "--results", str(results), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "held out: none" in out and "absent/all" in out and "AUSUC" in out
    assert re.search(r"\|\s+Absent/all cal\.\s+\|", out)
    assert main(["plot", "absent", "--results", str(results), "--out", str(tmp_path / "absent")]) == 0
    assert (tmp_path / "absent.png").stat().st_size > 0 and (tmp_path / "absent.svg").stat().st_size > 0
