"""Extending forgetbench: a new protocol, and a new drift metric, is one definition plus its registration.

The examples are small on purpose: a protocol that fine-tunes nothing and records the pre-trained model's zero-shot
accuracy on the target (its own record type, leaderboard table and summary line), and a cosine drift. Nothing else in
the code base is edited for either: the task loader, the runner, the store, the command line, the leaderboard, the
record checks and the audit pick them up from the registries.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import pytest
import yaml

from forgetbench.audit import fail_metrics
from forgetbench.cli import main
from forgetbench.data import get_dataset
from forgetbench.errors import SpecError
from forgetbench.evaluate.drift_metrics import DRIFT_METRICS, DriftMetric, register_drift
from forgetbench.evaluate.evaluation import Evaluation, FrozenModel
from forgetbench.evaluate.probe import normalize
from forgetbench.protocol import PROTOCOLS, Protocol, register_protocol
from forgetbench.records import ResultStore, RunRecord
from forgetbench.evaluate.heldout import PERCENT
from forgetbench.report.board import Column, build_board
from forgetbench.run import run_one
from forgetbench.schema import Section, entry, extras

from pipeline_helpers import tiny_task


# ------------------------------------------------------------------------------------------- a new protocol

@dataclass(frozen=True, kw_only=True)
class ZeroShotMetrics:
    target: float = entry(PERCENT)
    extra: Mapping[str, Any] = extras()


@dataclass(frozen=True, kw_only=True)
class ZeroShotRecord(RunRecord):
    SCHEMA: ClassVar[str] = "example.zeroshot/1"
    metrics: ZeroShotMetrics = entry(Section(ZeroShotMetrics))


class ZeroShotProtocol(Protocol):
    """The pre-trained model's zero-shot accuracy on the target: a baseline that fine-tunes nothing."""

    name = "example-zeroshot"
    description = "no fine-tune: the pre-trained model's zero-shot accuracy on the target"
    record_type = ZeroShotRecord

    def finetune_datasets(self, task):
        return [("finetune.dataset", task.finetune.dataset)]

    def run(self, request):
        t0, task = time.time(), request.task
        reference = FrozenModel.load(task.model, request.device)
        evaluation = Evaluation(task.evaluate, task.finetune.splits, reference)
        acc = evaluation.reference_accuracies(get_dataset(task.finetune.dataset), ("zs",))["zs"]
        timings = {"finetune_s": 0.0, "evaluate_s": time.time() - t0, "total_s": time.time() - t0}
        return ZeroShotRecord(**request.record_fields(reference, timings, training={}),
                              metrics=ZeroShotMetrics(target=acc))

    def summary_line(self, record):
        return f"zero-shot {record.metrics.target:.1f}%"

    def board(self, task, version, records, older):
        columns = [Column("Zero-shot", lambda r: r.metrics.target, "mean_std")]
        return build_board(task, version, records, older, "The pre-trained model.", columns, rank_by="Zero-shot")


@pytest.fixture
def zeroshot_protocol():
    register_protocol(ZeroShotProtocol)
    yield ZeroShotProtocol
    del PROTOCOLS._items[ZeroShotProtocol.name]  # leave the registry as every other test knows it


def test_a_new_protocol_runs_records_and_ranks_through_the_usual_commands(zeroshot_protocol, tmp_path, capsys):
    task_file = tmp_path / "tiny-zs.yaml"
    task_file.write_text(yaml.safe_dump({**tiny_task().to_dict(), "name": "tiny-zs", "protocol": "example-zeroshot"}))
    results = tmp_path / "results"
    assert main(["run", str(task_file), "--results", str(results), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ft seed 0: zero-shot " in out and "## tiny-zs (version 1)" in out and re.search(r"\|\s+Zero-shot\s+\|", out)
    (record,) = ResultStore(results).load()  # stored, validated on the way in and out, read back as its own type
    assert isinstance(record, ZeroShotRecord) and record.to_json()["schema"] == "example.zeroshot/1"
    assert 0 <= record.metrics.target <= 100
    assert main(["ls", "protocols"]) == 0 and "example-zeroshot" in capsys.readouterr().out
    assert main(["run", str(task_file), "--results", str(results), "--save-weights"]) == 2  # not an option it has
    assert "--save-weights is not supported for example-zeroshot tasks" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- a new drift metric

def cosine_drift(f_ref: np.ndarray, f_tuned: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """1 - mean cosine between each image's two features: 0 for unchanged features, at most 2."""
    return float(1.0 - (normalize(f_ref) * normalize(f_tuned)).sum(1).mean())


@pytest.fixture
def cosine():
    metric = register_drift(DriftMetric(name="cosine", title="cosine", column="Cosine drift", upper=2.0,
                                        description="cosine drift (held-out features, pre-trained vs fine-tuned)",
                                        compute=cosine_drift))
    yield metric
    del DRIFT_METRICS._items[metric.name]  # leave the registry as every other test knows it


def test_a_new_drift_metric_is_measured_checked_ranked_and_guarded(cosine, tmp_path, capsys):
    store = ResultStore(tmp_path)
    record = run_one(tiny_task(steps=3, drift=("l2", "cosine")), "ft", 0, store, progress=False)
    held = record.metrics.heldout["test/colours"]
    assert 0 < held.drift["cosine"] <= 2 and record.metrics.summary["drift_cosine_mean"] == held.drift["cosine"]
    assert main(["leaderboard", "--results", str(tmp_path), "--out", str(tmp_path / "board.md")]) == 0
    assert re.search(r"\|\s+Cosine drift\s+\|", (tmp_path / "board.md").read_text())
    assert fail_metrics()["mean_drift_cosine"] == "drift_cosine_mean"  # an audit can guard it
    bad = record.to_json()
    bad["metrics"]["heldout"]["test/colours"]["drift"]["cosine"] = 2.5  # beyond its declared bound
    with pytest.raises(SpecError, match=r"drift.cosine: expected a number in \[-1e-06, 2.0\]"):
        store.append(bad, replace=True)
