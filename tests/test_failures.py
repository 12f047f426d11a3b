"""Failures: each gives one clear error, a line in the failures log with its reason, and no record."""
from __future__ import annotations

import errno
import logging
import sys

import pytest
import torch
import yaml

from forgetbench import checkpoint
from forgetbench.cli import main
from forgetbench.data import DATASETS, ImageDataset
from forgetbench.errors import DataError, DivergenceError, ResourceError, WeightsError
from forgetbench.methods import METHODS, Method, get_method, register
from forgetbench.models import mini_clip
from forgetbench.records import ResultStore, run_id
from forgetbench.run import run_one
from forgetbench.train import OutOfMemoryError, TrainOptions

from pipeline_helpers import tiny_task

MAX_FITTING = 8  # the fake GPU holds micro-batches of at most this many images


def _register_once(cls):
    if cls.name not in METHODS:
        register(cls)
    return cls.name


class SmallGPU(Method):
    """Plain fine-tuning on a GPU that runs out of memory above MAX_FITTING images per forward pass."""

    name = "test-small-gpu"
    citation = "test method"

    def loss(self, ctx, batch):
        if len(batch.images) > MAX_FITTING:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return None


class Exploding(Method):
    name = "test-nan-at-step-2"
    citation = "test method"

    def after_step(self, ctx, step):
        ctx.state["step"] = step

    def loss(self, ctx, batch):
        return torch.tensor(float("nan")) if ctx.state.get("step") == 1 else None


def _failure(store: ResultStore, method: str, params=None) -> dict:
    (failure,) = store.failures()
    assert failure["status"] == "failed"
    assert failure["run_id"] == run_id("tiny", 1, method, get_method(method).check_params(params or {}), 0)
    return failure


def test_out_of_memory_halves_the_micro_batch_and_gives_the_accumulated_result(tmp_path, caplog):
    name = _register_once(SmallGPU)
    task = tiny_task(steps=2, drift=())  # batches of 32: 32 -> 16 -> 8 fits
    store = ResultStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="forgetbench"):
        record = run_one(task, name, 0, store, progress=False).to_json()
    assert record["training"]["oom_halvings"] == [1, 1] and record["training"]["micro_batch"] == MAX_FITTING
    assert [r.getMessage() for r in caplog.records if "out of GPU memory" in r.getMessage()] == [
        "out of GPU memory at step 1: micro-batch halved to 16 (gradient accumulation keeps the batch size at 32)",
        "out of GPU memory at step 1: micro-batch halved to 8 (gradient accumulation keeps the batch size at 32)"]
    assert [r.to_json() for r in store.load()] == [record] and store.failures() == []
    # the same as asking for micro-batches of 8 from the start (the failed attempts changed nothing) ...
    planned = run_one(task, name, 0, progress=False, options=TrainOptions(micro_batch=MAX_FITTING)).to_json()
    assert planned["metrics"] == record["metrics"]
    assert planned["training"]["final_loss"] == record["training"]["final_loss"]
    # ... and, up to the order of floating-point sums, as the whole batch at once on a GPU that is big enough
    whole = run_one(task, "ft", 0, progress=False).to_json()
    assert record["training"]["final_loss"] == pytest.approx(whole["training"]["final_loss"], rel=1e-5)
    assert record["metrics"]["summary"]["weight_drift"] == pytest.approx(
        whole["metrics"]["summary"]["weight_drift"], rel=1e-4)


def test_out_of_memory_at_a_micro_batch_of_one_is_a_clear_failure(tmp_path, monkeypatch):
    name = _register_once(SmallGPU)
    monkeypatch.setattr(sys.modules[__name__], "MAX_FITTING", 0)
    store = ResultStore(tmp_path)
    with pytest.raises(ResourceError, match="out of GPU memory at step 1 even with a micro-batch of 1"):
        run_one(tiny_task(steps=2, drift=()), name, 0, store, progress=False)
    assert store.load() == []
    assert _failure(store, name)["reason"].startswith("ResourceError: out of GPU memory")


def test_nan_loss_is_logged_as_a_failure(tmp_path):
    name = _register_once(Exploding)
    store = ResultStore(tmp_path)
    with pytest.raises(DivergenceError, match="loss became nan at step 2 of 3"):
        run_one(tiny_task(steps=3, drift=()), name, 0, store, progress=False)
    assert store.load() == [] and store.tasks() == []
    assert _failure(store, name)["reason"].startswith("DivergenceError: loss became nan at step 2")


def test_disk_full_when_storing_the_record(tmp_path, monkeypatch):
    def full(self, record, replace=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ResultStore, "append", full)
    store = ResultStore(tmp_path)
    with pytest.raises(ResourceError, match=r"disk full while writing under .* \(No space left on device\)"):
        run_one(tiny_task(steps=1, drift=()), "ft", 0, store, progress=False)
    assert store.load() == []
    assert "disk full" in _failure(store, "ft")["reason"]


def test_disk_full_when_checkpointing_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    store = ResultStore(tmp_path)
    with pytest.raises(ResourceError, match="disk full while writing checkpoint"):
        run_one(tiny_task(steps=2, drift=()), "ft", 0, store, progress=False, checkpoint_every=1)
    assert list((tmp_path / "checkpoints").glob("*.pt*")) == [] and store.load() == []
    assert "checkpoint" in _failure(store, "ft")["reason"]


def test_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(mini_clip, "MANIFEST", tmp_path / "gone" / "mini-clip.json")
    store = ResultStore(tmp_path)
    with pytest.raises(WeightsError, match="no shipped mini CLIP weights"):
        run_one(tiny_task(steps=1), "ft", 0, store, progress=False)
    assert store.load() == [] and _failure(store, "ft")["reason"].startswith("WeightsError")


def test_missing_data_files(tmp_path):
    missing = tmp_path / "images" / "train.npz"
    if "test/missing-files" not in DATASETS:
        DATASETS.register("test/missing-files", lambda: ImageDataset(
            name="test/missing-files", classnames=["a", "b"], templates=["a photo of {}."],
            split_builders={s: (lambda: open(missing, "rb")) for s in ("train", "val", "test")},
            fingerprint="missing"))
    spec = tiny_task(steps=1).to_dict()
    spec["evaluate"]["datasets"] = ["test/missing-files"]
    task = type(tiny_task()).from_dict(spec)
    store = ResultStore(tmp_path / "results")
    with pytest.raises(DataError, match=f"{missing} not found .*data or weights the run needs are missing"):
        run_one(task, "ft", 0, store, progress=False)
    assert store.load() == [] and _failure(store, "ft")["reason"].startswith("DataError")


def test_the_command_line_says_it_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mini_clip, "MANIFEST", tmp_path / "gone.json")
    task_file = tmp_path / "tiny.yaml"
    task_file.write_text(yaml.safe_dump(tiny_task(steps=1).to_dict()))
    code = main(["run", str(task_file), "--methods", "ft", "--results", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("forgetbench: error: no shipped mini CLIP weights")
    assert "Traceback" not in "\n".join(err)
    assert len(ResultStore(tmp_path / "r").failures()) == 1
