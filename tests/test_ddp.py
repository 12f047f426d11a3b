"""Data-parallel fine-tuning: two gloo processes on CPU end where one process on the same global batches ends."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from forgetbench import distributed
from forgetbench.records import ResultStore
from forgetbench.run import run_one

from pipeline_helpers import tiny_task

ROOT = Path(__file__).resolve().parent.parent

SAVING_METHOD = '''
import os
from safetensors.torch import save_file
from forgetbench.methods import Method, register

@register
class SaveFT(Method):
    """Plain fine-tuning that saves the final encoder and head (rank 0 only) where the test says."""
    name = "test-save-ft"
    citation = "test method"

    def finalize(self, ctx):
        if os.environ.get("RANK", "0") == "0":
            state = {**{"student." + k: v for k, v in ctx.student.state_dict().items()},
                     **{"head." + k: v for k, v in ctx.head.state_dict().items()}}
            save_file({k: v.detach().contiguous() for k, v in state.items()}, os.environ["FB_TEST_WEIGHTS"])
'''

RUNNER = '''
import sys
sys.path[:0] = [{root!r}, {tests!r}]
import pipeline_helpers  # registers the tiny test datasets
from forgetbench.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_shards_cover_the_batch_once_and_differ_by_at_most_one():
    batch = list(range(31))
    shares = [distributed.shard(batch, distributed.World(rank=r, size=3)) for r in range(3)]
    assert sum(shares, []) == batch and [len(s) for s in shares] == [11, 10, 10]
    assert distributed.shard(batch[:1], distributed.World(rank=1, size=2)) == []


@pytest.mark.slow  # fresh interpreters: imports dominate
def test_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    # batches of 31 from 96 images: 31, 31, 31, then 3 (shares 16/15 and 2/1); micro-batches of 8 on top.
    # SGD: its step is linear in the gradient, so a rounding difference stays one. AdamW divides by sqrt(v) and turns
    # the rounding noise of gradients that are exactly zero in exact arithmetic (attention key biases) into full
    # steps of either sign; with it, every other weight agrees as closely, those biases do not.
    task = tiny_task(steps=4, drift=(), batch_size=31, optimizer="sgd", lr=0.05)
    task_file = tmp_path / "tiny.yaml"
    task_file.write_text(yaml.safe_dump(task.to_dict()))
    method_file = tmp_path / "save_ft.py"
    method_file.write_text(SAVING_METHOD)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    results = tmp_path / "results"
    env = {**os.environ, "FB_TEST_WEIGHTS": str(tmp_path / "ddp.safetensors"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(runner),
         "run", str(task_file), "--methods", str(method_file), "--seeds", "0", "--results", str(results),
         "--device", "cpu", "--micro-batch", "8", "--quiet"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [r.to_json() for r in ResultStore(results).load()]  # written once, by rank 0
    assert record["provenance"]["execution"] == {"processes": 2, "micro_batch": 8}

    monkeypatch.setenv("FB_TEST_WEIGHTS", str(tmp_path / "single.safetensors"))
    single_record = run_one(task, str(method_file), 0, progress=False, device="cpu").to_json()
    ddp, single = load_file(tmp_path / "ddp.safetensors"), load_file(tmp_path / "single.safetensors")
    assert ddp.keys() == single.keys()
    for key in single:
        error = (ddp[key] - single[key]).norm() / single[key].norm().clamp_min(1e-12)
        assert error <= 1e-5, f"{key}: relative difference {error:.2e}"
    assert record["training"]["steps"] == single_record["training"]["steps"] == 4
    # the weights did move: equality is not just two copies of the starting point
    assert single_record["metrics"]["summary"]["weight_drift"] > 1e-3


def test_execution_options_do_not_change_the_fine_tune():
    from forgetbench.train import TrainOptions

    task = tiny_task(steps=2, drift=())
    plain = run_one(task, "ft", 0, progress=False).to_json()
    tuned = run_one(task, "ft", 0, progress=False,
                    options=TrainOptions(micro_batch=12, channels_last=True, workers=1)).to_json()
    assert tuned["provenance"]["execution"] == {"micro_batch": 12, "channels_last": True, "workers": 1}
    assert tuned["training"]["final_loss"] == pytest.approx(plain["training"]["final_loss"], rel=1e-5)
    assert tuned["metrics"]["summary"]["weight_drift"] == pytest.approx(
        plain["metrics"]["summary"]["weight_drift"], rel=1e-4)
