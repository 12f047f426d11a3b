"""The paper-protocol task files, `run --dry-run`, `bench`, and a timm model (no text tower) through a whole run."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from forgetbench.cli import main
from forgetbench.data import DATASETS
from forgetbench.dryrun import dry_run
from forgetbench.methods import METHODS
from forgetbench.models import MODELS
from forgetbench.tasks import TASKS, check_names, load_task
from pipeline_helpers import tiny_task

ROOT = Path(__file__).resolve().parent.parent
PAPER_TASKS = sorted(n for n in TASKS.names() if n.startswith("e2e-"))
#: Same families as the real backbones, small enough for a test: the dry run's code path is the same.
TINY = {"openclip": "openclip:forgetbench-mini-clip@random", "timm": "timm:vit_tiny_patch16_224@random?img_size=32"}


def _generator():
    spec = importlib.util.spec_from_file_location("make_paper_tasks", ROOT / "tasks" / "make_paper_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_task_files_validate_and_match_their_generator():
    assert len(PAPER_TASKS) == 20
    for name in PAPER_TASKS:
        task = load_task(name)
        check_names(task, DATASETS, MODELS, METHODS)  # model spec, the ten datasets, every method
        assert task.train.lr == 1e-5 and task.train.weight_decay == 0.1 and task.train.batch_size == 128
        assert task.train.warmup_steps == 500 and task.train.grad_clip == 1.0 and task.train.schedule == "cosine"
        assert len(task.evaluate.datasets) == 9 and task.targets
        assert all("Proxy-FDA" in t.paper and t.table.startswith(("Table 1", "text")) for t in task.targets)
    assert _generator().main(["--check"]) == 0


def test_clip_tasks_target_table_1_and_epochs_follow_ldifs():
    task = load_task("e2e-clip-vitb32-dtd")
    assert task.model == "openclip:ViT-B-32@openai" and task.train.epochs == 76
    targets = {(t.method, "delta" in t.metric): t.value for t in task.targets}
    assert targets[("proxy-fda", True)] == 1.54 and targets[("ft", True)] == -4.37 and targets[("ft", False)] == 91.9
    assert load_task("e2e-clip-vitb32-stanford-cars").train.epochs == 35
    dino = load_task("e2e-dinov2-vitb14-cifar10")
    assert dino.model.startswith("timm:vit_base_patch14_dinov2") and not dino.evaluate.zero_shot
    assert [(t.value, t.claim) for t in dino.targets] == [(None, "> 0")]  # no number found: its direction only


def _tiny(task):
    return dataclasses.replace(task, model=TINY[task.model.partition(":")[0]])


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_dry_run_of_every_paper_task(name, tmp_path, monkeypatch):
    """Every task's datasets (class names, templates) and head set-up, one `ft` step on its fake data."""
    monkeypatch.setenv("FORGETBENCH_CACHE", str(tmp_path / "cache"))
    lines = []
    dry_run(_tiny(load_task(name)), ["ft"], batch=4, out=lines.append, allow_missing=True)
    assert any("method ft: " in line and "loss" in line for line in lines)
    # no data root here: the last line says plainly that the real datasets were not checked
    assert lines[-1].startswith("dry run INCOMPLETE") and "NOT checked" in lines[-1] and "dataset " in lines[-1]
    assert not (tmp_path / "cache").exists()  # nothing written, not even features


@pytest.mark.parametrize("name", ["e2e-clip-vitb32-eurosat", "e2e-dinov2-vitb14-eurosat"])
def test_dry_run_steps_every_method_of_the_protocol(name):
    task = _tiny(load_task(name))
    lines = []
    dry_run(task, list(task.methods), batch=8, out=lines.append, allow_missing=True)
    stepped = [line for line in lines if line.startswith("  method ")]
    assert len(stepped) == len(task.methods) and all("loss" in line for line in stepped)


def test_cli_dry_run_writes_nothing(tmp_path, capsys):
    task = tmp_path / "tiny-real.yaml"
    text = (ROOT / "tasks" / "e2e-clip-vitb32-gtsrb.yaml").read_text()
    task.write_text(text.replace("openclip:ViT-B-32@openai", TINY["openclip"]).replace(
        "name: e2e-clip-vitb32-gtsrb", "name: tiny-real"))
    results = tmp_path / "results"
    args = ["run", str(task), "--dry-run", "--methods", "ft", "--dry-run-batch", "4", "--results", str(results),
            "--data-root", str(tmp_path / "data")]
    assert main(args + ["--allow-missing"]) == 0
    out = capsys.readouterr().out
    assert "dataset gtsrb (fine-tune, 43 classes, 3 templates): not available here" in out
    assert f"data root: {tmp_path / 'data'}" in out and "dry run INCOMPLETE" in out and "dry run ok" not in out
    assert not results.exists()


def test_cli_dry_run_without_weights_or_data_fails_with_one_list(tmp_path, capsys):
    """No weights and an empty data root: exit 2 and one line naming the weights and every missing dataset, before
    any model is built (the issue's case took a minute and a half to say "ok")."""
    (tmp_path / "data").mkdir()
    results = tmp_path / "results"
    assert main(["run", "e2e-clip-vitb32-cifar10", "--dry-run", "--results", str(results),
                 "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forgetbench: error: dry run of e2e-clip-vitb32-cifar10: missing ")
    assert "weights of openclip:ViT-B-32@openai" in err[0]
    assert all(f"dataset {d} (" in err[0] for d in ["cifar10", *load_task("e2e-clip-vitb32-cifar10").evaluate.datasets])
    assert not results.exists()


def test_bench_measures_extraction_and_steps():
    from forgetbench.bench import bench

    lines = []
    result = bench(TINY["openclip"], methods=("ft", "ldifs"), batch=4, steps=1, repeats=1, out=lines.append)
    assert result["forward_images_per_s"] > 0 and result["extract_images_per_s"] > 0
    assert set(result["step_s"]) == {"ft", "ldifs"} and all(v > 0 for v in result["step_s"].values())
    assert any("fine-tune step, ldifs" in line for line in lines)


def test_a_timm_model_runs_end_to_end_and_zero_shot_is_skipped_with_a_note(tmp_path):
    import torch

    from forgetbench.models import get_model
    from forgetbench.records import parse_record
    from forgetbench.run import run_one, weights_path

    task = dataclasses.replace(tiny_task(steps=2, drift=("l2",)), model=TINY["timm"])
    record = run_one(task, "ldifs", 0, progress=False, weights_dir=tmp_path).to_json()  # LDIFS taps the ViT's blocks
    parse_record(record)  # a valid record
    assert record["model"]["notes"] and "zero-shot metrics skipped" in record["model"]["notes"][0]
    assert record["training"]["head_init"] == "zeroshot" and record["training"]["steps"] == 2
    for m in record["metrics"]["heldout"].values():
        assert "zs" not in m and "delta_zs" not in m and "lp" in m
    assert "delta_zs_mean" not in record["metrics"]["summary"]
    # the saved encoder is a model spec of its own: finetuned:FILE rebuilds the base model around it
    path = weights_path(tmp_path, task.name, "ldifs", 0, record["run_id"])
    tuned = get_model(f"finetuned:{path}")
    base = get_model(TINY["timm"])
    assert not tuned.has_text and tuned.preprocess_id == base.preprocess_id
    assert any(not torch.equal(a, b) for a, b in zip(tuned.visual.state_dict().values(),
                                                     base.visual.state_dict().values()))
