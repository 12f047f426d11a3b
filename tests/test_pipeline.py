"""Known answers of the whole pipeline: task -> fine-tune -> evaluate -> record."""
from dataclasses import replace

import pytest

from forgetbench.errors import DivergenceError
from forgetbench.records import ResultStore
from forgetbench.run import run_one

from pipeline_helpers import tiny_task


def _no_change(record):
    held = record.metrics.heldout["test/colours"]
    assert held.delta_lp == 0.0 and held.delta_zs == 0.0
    assert held.lp == held.lp_reference and held.zs == held.zs_reference
    assert held.drift["l2"] == 0.0 and held.drift["kernel"] == 0.0
    assert abs(held.drift["otdd"]) < 1e-6
    assert record.metrics.summary["weight_drift"] == 0.0


def test_zero_steps_give_zero_forgetting_and_zero_drift():
    record = run_one(tiny_task(steps=0), "ft", 0, progress=False)
    _no_change(record)
    target = record.metrics.target
    assert target.acc == target.zs_reference  # the zero-shot head, unchanged
    # the gain is measured against the better frozen head, whichever the method starts from
    assert target.acc_reference == max(target.zs_reference, target.lp_reference)
    assert target.gain == target.acc - target.acc_reference


def test_a_record_carries_its_method_code_and_weights_hashes():
    from forgetbench.methods import get_method, method_source

    record = run_one(tiny_task(steps=0), "ft", 0, progress=False)
    assert record.method.source_sha256 == method_source(get_method("ft")).sha256
    assert len(record.model.weights_sha256) == 64


def test_wise_ft_at_alpha_zero_is_the_reference_model():
    record = run_one(tiny_task(steps=4), "wise-ft", 0, params={"alpha": 0.0}, progress=False)
    _no_change(record)
    assert record.metrics.target.acc == record.metrics.target.zs_reference


def test_linear_probe_leaves_held_out_accuracy_unchanged():
    _no_change(run_one(tiny_task(steps=4), "lp", 0, progress=False))


def test_fine_tuning_changes_the_encoder():
    record = run_one(tiny_task(steps=4), "ft", 0, progress=False)
    assert record.metrics.summary["weight_drift"] > 0
    assert record.metrics.heldout["test/colours"].drift["l2"] > 0


def _strip(record):
    record = record.to_json()
    record.pop("timings")
    record["training"].pop("peak_memory_mb", None)  # a measurement of the machine, like the timings
    record["provenance"] = {k: v for k, v in record["provenance"].items() if k != "timestamp_utc"}
    return record


@pytest.mark.parametrize("method", ["ft", "ldifs"])
def test_same_seed_gives_identical_records(method):
    a = run_one(tiny_task(steps=3), method, 0, progress=False)
    b = run_one(tiny_task(steps=3), method, 0, progress=False)
    assert _strip(a) == _strip(b)


def test_records_are_stored_once_and_skipped_after(tmp_path):
    store = ResultStore(tmp_path)
    task = tiny_task(steps=0)
    assert run_one(task, "ft", 0, store, progress=False) is not None
    assert run_one(task, "ft", 0, store, progress=False) is None  # already recorded
    assert len(store.load("tiny")) == 1


NAN_METHOD = """
import torch
from forgetbench.methods import Method, register

@register
class Exploding(Method):
    name = "test-exploding"
    def loss(self, ctx, batch):
        return torch.tensor(float("nan")) if ctx.state.setdefault("calls", 0) else ctx.state.update(calls=1)
"""


def test_nan_loss_stops_the_run_and_records_nothing(tmp_path):
    method_file = tmp_path / "exploding.py"
    method_file.write_text(NAN_METHOD)
    store = ResultStore(tmp_path / "results")
    with pytest.raises(DivergenceError, match="step 2 of 3"):
        run_one(tiny_task(steps=3), str(method_file), 0, store, progress=False)
    assert store.load() == [] and not (tmp_path / "results" / "tiny.jsonl").exists()


def test_checkpoints_give_a_trajectory_that_starts_at_zero():
    task = tiny_task(steps=6)
    task = type(task).from_dict({**task.to_dict(), "evaluate": {**task.to_dict()["evaluate"], "checkpoints": 2}})
    record = run_one(task, "ft", 0, progress=False)
    steps = [p.step for p in record.trajectory]
    assert steps == [0, 2, 4, 6]
    start = record.trajectory[0].heldout["test/colours"]
    assert start.delta_lp == 0.0 and start.drift["l2"] == 0.0  # measured, and the student is the pre-trained model
    # the last checkpoint is the final model; only the final metrics keep which test images each probe got right
    assert record.trajectory[-1].heldout == {k: replace(m, correct=None) for k, m in record.metrics.heldout.items()}
    assert all(m.correct is not None for m in record.metrics.heldout.values())
