"""Task sequences: the schema, class splits, the runner (on tiny datasets) and its CLI path."""
import json
import re

import numpy as np
import pytest

from forgetbench.cli import main
from forgetbench.data import get_dataset
from forgetbench.data.subsets import class_splits, class_subset
from forgetbench.errors import DataError, SpecError
from forgetbench.evaluate.sequences import heldout_metrics, sequence_metrics
from forgetbench.methods import METHODS
from forgetbench.records import ResultStore, parse_record
from forgetbench.run import run_one
from forgetbench.tasks import TaskSpec, load_task_text

from pipeline_helpers import tiny_task

SEQUENCE_YAML = """\
name: tiny-seq
version: 1
model: mini-clip
sequence:
  split: {dataset: test/shapes, tasks: 2, class_order_seed: 0}
  reference: previous
  accuracy: [zs, lp]
evaluate:
  datasets: [test/colours]
  linear_probe: {C_grid: [1.0, 10.0]}
train: {lr: 1.0e-3, batch_size: 32, steps: 3, warmup_steps: 1, grad_clip: 1.0}
methods: [ft]
seeds: [0]
"""


def sequence_task(steps=3, reference="previous", accuracy=("zs", "lp"), **sequence):
    d = tiny_task(steps=steps, drift=()).to_dict()
    del d["finetune"]["dataset"]
    d["sequence"] = {"split": {"dataset": "test/shapes", "tasks": 2}, "reference": reference,
                     "accuracy": list(accuracy), **sequence}
    if "datasets" in sequence:
        del d["sequence"]["split"]
        d["evaluate"]["datasets"] = []
    return TaskSpec.from_dict(d)


# ------------------------------------------------------------------------------------------------ schema

def test_sequence_spec_round_trips_and_plain_tasks_keep_their_form():
    spec = load_task_text(SEQUENCE_YAML, "tasks/tiny-seq.yaml")
    d = spec.to_dict()
    assert "dataset" not in d["finetune"] and d["sequence"]["split"] == {"dataset": "test/shapes", "tasks": 2,
                                                                          "class_order_seed": 0}
    assert TaskSpec.from_dict(json.loads(json.dumps(d))) == spec
    assert spec.sequence.finetune_datasets() == ("test/shapes",)
    plain = tiny_task().to_dict()  # a task without the new sections has no new keys in its records
    assert "sequence" not in plain and "seen_classes" not in plain["finetune"]


@pytest.mark.parametrize("old,new,where,message", [
    ("  split: {dataset: test/shapes, tasks: 2, class_order_seed: 0}\n",
     "  split: {dataset: test/shapes, tasks: 2}\n  datasets: [test/colours]\n", 4, "give exactly one of"),
    ("  reference: previous", "  reference: previus", 6, "did you mean 'previous'"),
    ("  accuracy: [zs, lp]", "  accuracy: [zs, acc]", 7, "expected one of zs, lp"),
    ("  datasets: [test/colours]", "  datasets: [test/shapes]", 9, "is a fine-tune dataset (sequence.split.dataset)"),
    ("  linear_probe: {C_grid: [1.0, 10.0]}", "  linear_probe: {C_grid: [1.0, 10.0]}\n  drift: [l2]", 11,
     "not supported in a sequence task"),
    ("model: mini-clip\n", "model: mini-clip\nfinetune: {dataset: test/shapes}\n", 4, "names its datasets in sequence"),
])
def test_sequence_spec_errors_point_at_the_line(old, new, where, message):
    text = SEQUENCE_YAML.replace(old, new)
    assert text != SEQUENCE_YAML
    with pytest.raises(SpecError) as info:
        load_task_text(text, "tasks/tiny-seq.yaml")
    assert str(info.value).startswith(f"tasks/tiny-seq.yaml:{where}:") and message in str(info.value)


def test_a_plain_task_still_needs_finetune():
    text = SEQUENCE_YAML.replace("sequence:\n  split: {dataset: test/shapes, tasks: 2, class_order_seed: 0}\n"
                                "  reference: previous\n  accuracy: [zs, lp]\n", "")
    with pytest.raises(SpecError, match="finetune.dataset: missing required field"):
        load_task_text(text, "x.yaml")


# ------------------------------------------------------------------------------------------------ class splits

def test_class_splits_and_subsets():
    ds = get_dataset("test/shapes")  # 8 classes
    assert class_splits(ds, 4, None) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    order = np.random.default_rng(3).permutation(8)
    assert class_splits(ds, 2, 3) == [sorted(order[:4].tolist()), sorted(order[4:].tolist())]
    with pytest.raises(DataError, match="into 3 equal groups"):
        class_splits(ds, 3, 0)
    full = ds.labels("test")
    step = class_subset(ds, [5, 2], relabel=True, name="test/shapes#x")
    assert step.classnames == [ds.classnames[5], ds.classnames[2]]
    assert step.labels("test").tolist() == [{5: 0, 2: 1}[y] for y in full if y in (5, 2)]
    kept = class_subset(ds, [5, 2], relabel=False, name="test/shapes[seen]")
    assert kept.classnames == ds.classnames and kept.labels("test").tolist() == [y for y in full if y in (5, 2)]
    assert len({step.fingerprint, kept.fingerprint, ds.fingerprint}) == 3  # distinct feature-cache keys
    image, label = step.split("test")[0]
    assert label == step.labels("test")[0] and image.size == ds.split("test")[0][0].size


# ------------------------------------------------------------------------------------------------ the runner

def test_zero_step_fine_tunes_give_the_reference_accuracies_in_every_row():
    record = parse_record(run_one(sequence_task(steps=0), "ft", 0, progress=False).to_json())  # a valid record
    for kind in ("zs", "lp"):
        m = getattr(record.metrics, kind)
        assert m.R == (m.reference,) * 2 and m.heldout == (m.heldout_reference,) * 2
        s = m.summary
        assert s["bwt"] == 0.0 and s["forgetting"] == 0.0 and s["fwt"] == 0.0 and s["heldout_delta_mean"] == 0.0
    assert record.sequence.steps[0].classes and record.training["steps"] == [0, 0]


FROZEN_PROBE = """
from forgetbench.methods import Method, register
from forgetbench.models import state_dict_hash

@register
class FrozenProbe(Method):
    name = "test-frozen-probe"
    seen = []  # (hash of ctx.frozen, hash of ctx.student) at the start of every fine-tune

    def setup(self, ctx):
        type(self).seen.append((state_dict_hash(ctx.frozen), state_dict_hash(ctx.student)))
"""


def test_each_step_regularises_towards_the_original_or_the_previous_model(tmp_path):
    path = tmp_path / "frozen_probe.py"
    path.write_text(FROZEN_PROBE)
    record = None
    for anchor in ("original", "previous"):
        record = run_one(sequence_task(steps=2, reference=anchor, accuracy=["zs"]), str(path), 0, progress=False)
    seen = METHODS.get("test-frozen-probe").seen
    (ref0, student0), (ref1, student1), (pref0, pstudent0), (pref1, pstudent1) = seen
    assert ref0 == student0 == pref0 == pstudent0  # step 1 starts from the original model either way
    assert ref1 == ref0 != student1  # original: step 2 still looks at the original model...
    assert pref1 == pstudent1 != pref0  # ...previous: at where step 1 ended, which step 2 starts from
    assert student1 == pstudent1  # the same first step under both
    assert record.sequence.anchor == "previous" and record.to_json()["sequence"]["reference"] == "previous"


def test_a_sequence_refuses_execution_options_it_does_not_support_before_any_work(tmp_path):
    with pytest.raises(SpecError, match="--checkpoint-every is not supported for sequence tasks"):
        run_one(sequence_task(), "ft", 0, ResultStore(tmp_path), progress=False, checkpoint_every=2)
    assert not list(tmp_path.iterdir())  # nothing written, not even a failure


def test_fine_tuning_a_sequence_records_its_matrices_once(tmp_path):
    store = ResultStore(tmp_path)
    task = sequence_task(steps=3, datasets=["test/shapes", "test/colours"], accuracy=["zs"])
    record = run_one(task, "ft", 0, store, progress=False).to_json()
    assert run_one(task, "ft", 0, store, progress=False) is None  # already recorded
    (stored,) = store.load("tiny")
    assert stored.to_json() == json.loads(json.dumps(record))
    m = record["metrics"]["zs"]
    assert np.array(m["R"]).shape == (2, 2) and m["heldout"] == [[], []]
    assert m["R"] != [m["reference"]] * 2  # training changed something
    assert m["summary"] == pytest.approx({**sequence_metrics(m["R"], m["reference"]), **heldout_metrics(m["heldout"], [])})
    assert len(record["metrics"]["target"]) == 2 and record["training"]["steps"] == [3, 3]
    bad = json.loads(json.dumps(record))
    bad["metrics"]["zs"]["summary"]["avg"] += 1
    with pytest.raises(SpecError, match="summary.avg"):
        parse_record(bad)
    bad["metrics"]["zs"]["R"][0] = [1.0]
    with pytest.raises(SpecError, match=r"metrics.zs.R\[0\]: expected a list of 2 accuracies, got 1"):
        parse_record(bad)


def test_cli_runs_plots_and_ranks_a_sequence(tmp_path, capsys):
    task_file = tmp_path / "tiny-seq.yaml"
    task_file.write_text(SEQUENCE_YAML.replace("accuracy: [zs, lp]", "accuracy: [zs]"))
    results = tmp_path / "results"
    assert main(["run", str(task_file), "--results", str(results), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ft seed 0: zs Avg" in out and "## tiny-seq (version 1)" in out and re.search(r"\|\s+Avg\s+\|", out)
    prefix = tmp_path / "fig" / "tiny-seq"
    assert main(["plot", "sequence", "--results", str(results), "--out", str(prefix)]) == 0
    for name in ("tiny-seq-matrix.png", "tiny-seq-matrix.svg", "tiny-seq-heldout.png", "tiny-seq-heldout.svg"):
        assert (tmp_path / "fig" / name).stat().st_size > 0
    assert main(["run", str(task_file), "--results", str(results), "--checkpoint-every", "5"]) == 2
    assert "not supported for sequence tasks" in capsys.readouterr().err
