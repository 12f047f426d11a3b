"""The prompt-tuning protocol (CoOp base-to-new): known answers, the towers stay frozen, the sampling, the guards."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from forgetbench.cli import main
from forgetbench.data import get_dataset
from forgetbench.errors import DataError, SpecError
from forgetbench.evaluate.evaluation import Evaluation, FrozenModel
from forgetbench.methods import get_method
from forgetbench.models import state_dict_hash
from forgetbench.prompt_tuning import PromptLearner, base_new_classes, harmonic_mean, kshot_indices
from forgetbench.protocols.prompt_tuning import BaseNew, PromptRecord, paired_new_difference, tune_dataset
from forgetbench.records import ResultStore
from forgetbench.report.bootstrap import ImageDraws
from forgetbench.run import run_one
from forgetbench.schema import Problems
from forgetbench.tasks import TaskSpec, load_task

from pipeline_helpers import tiny_task
from test_baselines import single_thread  # noqa: F401  (fixture)

METHODS = ("coop", "kgcoop", "coop-proxy-fda")


def prompt_task(steps: int = 3, init: str | None = "a photo of a", n_ctx: int = 4, **prompt) -> TaskSpec:
    return TaskSpec.from_dict({
        "name": "tiny-prompt", "version": 1, "model": "mini-clip", "protocol": "prompt-tuning",
        "prompt_tuning": {"datasets": ["test/shapes", "test/colours"], "shots": 4, "context_tokens": n_ctx,
                          "context_init": init, **prompt},
        "evaluate": {"datasets": []},
        "train": {"optimizer": "sgd", "lr": 0.002, "batch_size": 8, "steps": steps, "warmup_steps": 0},
        "methods": list(METHODS), "seeds": [0, 1],
    })


@pytest.fixture(scope="module")
def reference():
    ref = FrozenModel.load("mini-clip", "cpu")
    ref.model.text_model.to("cpu")
    return ref


# ------------------------------------------------------------------------------------------------- known answers

def test_harmonic_mean_of_known_values():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140) == pytest.approx(68.5714285714)
    assert harmonic_mean(100.0, 100.0) == 100.0 and harmonic_mean(50.0, 0.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0
    problems = Problems()
    BaseNew(base=80.0, new=60.0, h=70.0).check_fields("metrics.average", problems)  # 70 is the arithmetic mean
    assert problems and "harmonic mean" in str(problems.items[0])


def test_base_and_new_are_the_first_and_second_half_by_class_index():
    assert base_new_classes(8) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert base_new_classes(9) == ([0, 1, 2, 3, 4], [5, 6, 7, 8])  # ceil(C/2) base, as CoOp
    with pytest.raises(SpecError, match="unknown base/new split rule"):
        base_new_classes(8, "random")


def test_kshot_sampling_is_deterministic_per_seed_and_touches_base_classes_only():
    labels = np.repeat(np.arange(8), 20)
    rng = np.random.default_rng(5)
    labels = labels[rng.permutation(len(labels))]
    base = [0, 1, 2, 3]
    a, b, c = (kshot_indices(labels, base, 16, s) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(labels[a]) == set(base) and np.all(np.bincount(labels[a], minlength=8)[base] == 16)
    assert len(set(a.tolist())) == len(a)  # without replacement
    with pytest.raises(DataError, match="fewer than the 21 shots"):
        kshot_indices(labels, base, 21, 0)


def test_context_from_the_handcrafted_words_gives_that_prompts_text_features(reference):
    model = reference.model
    names = ["circle", "square", "triangle"]
    learner = PromptLearner(model, names, 4, "a photo of a", seed=0, device="cpu")
    with torch.no_grad():
        learned = learner()
        plain = model.encode_text([f"a photo of a {n}." for n in names])
    assert torch.allclose(learned, plain, atol=1e-5)
    random = PromptLearner(model, names, 4, None, seed=0, device="cpu")
    assert random.ctx.std().item() == pytest.approx(0.02, rel=0.3)  # CoOp's init: normal, std 0.02
    assert not torch.allclose(random().detach(), plain, atol=1e-3)
    with pytest.raises(SpecError, match="is 4 tokens but context_tokens is 16"):
        PromptLearner(model, names, 16, "a photo of a", seed=0, device="cpu")


def test_zero_steps_from_the_handcrafted_words_score_that_prompts_zero_shot_accuracy(tmp_path, single_thread):
    record = run_one(prompt_task(steps=0), "coop", 0, ResultStore(tmp_path), progress=False)
    assert isinstance(record, PromptRecord)
    for name, d in record.metrics.datasets.items():
        assert d.init_prompt is not None
        assert (d.base, d.new) == (d.init_prompt.base, d.init_prompt.new), name
        assert (d.n_base, d.n_new) == (4, 4)
    assert record.metrics.average.h == pytest.approx(harmonic_mean(record.metrics.average.base,
                                                                   record.metrics.average.new))


# ------------------------------------------------------------------------------------------------- frozen towers

@pytest.mark.parametrize("method", METHODS)
def test_prompt_tuning_leaves_both_towers_bit_identical(reference, method, single_thread):
    task = prompt_task(steps=4)
    clip = reference.model.text_model
    before = state_dict_hash(clip)
    dataset = get_dataset("test/shapes")
    evaluation = Evaluation(task.evaluate, task.finetune.splits, reference)
    learned = {}

    def capture(self, ctx):  # the context after training
        learned["ctx"] = ctx.learner.ctx.detach().clone()

    cls = get_method(method)
    instance = cls(**task.params_for(method))
    instance.finalize = capture.__get__(instance)
    scores, facts = tune_dataset(task, instance, reference, evaluation, dataset, seed=0)
    assert state_dict_hash(clip) == before  # image and text towers (the visual tower is clip.visual)
    start = PromptLearner(reference.model, ["circle"], 4, "a photo of a", 0, "cpu").ctx
    assert facts["steps"] == 4 and not torch.equal(learned["ctx"], start)  # the context itself did move
    assert 0 <= scores.base <= 100 and 0 <= scores.new <= 100


# ------------------------------------------------------------------------------------------------- the protocol

def test_the_protocol_refuses_methods_of_the_other_protocol_before_any_work(tmp_path):
    with pytest.raises(SpecError, match="runs prompt methods only"):
        run_one(prompt_task(), "ft", 0, ResultStore(tmp_path), progress=False)
    with pytest.raises(SpecError, match="runs under the prompt-tuning protocol only"):
        run_one(tiny_task(), "coop", 0, ResultStore(tmp_path), progress=False)
    assert not list(tmp_path.iterdir()) or not ResultStore(tmp_path).load()


def test_a_prompt_task_is_checked_at_its_fields():
    good = prompt_task().to_dict()
    bad = {**good, "evaluate": {"datasets": ["test/colours"]}}
    with pytest.raises(SpecError, match="evaluate.datasets: prompt tuning measures"):
        TaskSpec.from_dict(bad)
    bad = {**good, "prompt_tuning": {**good["prompt_tuning"], "epochs": {"mini/digits": 5}}}
    with pytest.raises(SpecError, match=r"prompt_tuning.epochs.mini/digits: not a dataset"):
        TaskSpec.from_dict(bad)
    from forgetbench.data import DATASETS
    from forgetbench.methods import METHODS as REGISTRY
    from forgetbench.models import MODELS
    from forgetbench.tasks import check_names

    few = {**good, "prompt_tuning": {**good["prompt_tuning"], "datasets": ["mini/noise"]}}
    with pytest.raises(SpecError, match="has 3 classes; base-to-new needs at least 4"):
        check_names(TaskSpec.from_dict(few), DATASETS, MODELS, REGISTRY)


def test_runs_record_base_new_h_and_the_board_is_its_own_table(tmp_path, capsys, single_thread):
    task = prompt_task(steps=2)
    store = ResultStore(tmp_path)
    records = {(m, s): run_one(task, m, s, store, progress=False) for m in ("coop", "kgcoop") for s in (0, 1)}
    for r in records.values():
        a = r.metrics.average
        ds = list(r.metrics.datasets.values())
        assert a.base == pytest.approx(np.mean([d.base for d in ds])) and a.h == pytest.approx(harmonic_mean(a.base,
                                                                                                             a.new))
    assert {type(r) for r in store.load()} == {PromptRecord}  # stored and read back as their own type
    assert main(["leaderboard", "--results", str(tmp_path), "--out", str(tmp_path / "board.md")]) == 0
    text = (tmp_path / "board.md").read_text()
    assert "## tiny-prompt (version 1)" in text and "New − coop" in text and "Pre-trained zero-shot" in text
    assert (tmp_path / "board.html").exists() and "New − coop" in (tmp_path / "board.html").read_text()
    # the paired difference of a setting with itself is 0, with an interval of width 0
    coop = [records[("coop", s)] for s in (0, 1)]
    sizes = {n: int(d.correct["new"].split(":")[0]) for n, d in coop[0].metrics.datasets.items()}
    same = paired_new_difference(coop, coop, ImageDraws(sizes, draws=200))
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    kg = [records[("kgcoop", s)] for s in (0, 1)]
    diff = paired_new_difference(kg, coop, ImageDraws(sizes, draws=200))
    assert diff.mean == pytest.approx(np.mean([k.metrics.average.new - c.metrics.average.new for k, c in zip(kg, coop)]))


def test_the_mini_task_dry_runs_and_the_real_task_validates(capsys, single_thread):
    assert main(["run", "mini-base2new", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mini/digits: 10 classes (5 base, 5 new), 16 shots x 5 = 80 training images" in out
    assert out.count("method coop-proxy-fda: loss") == 6 and "dry run ok" in out
    real = load_task("coop-base2new-vitb16")
    assert real.prompt_tuning.shots == 16 and real.prompt_tuning.epochs == {"imagenet": 50}
    assert real.model.startswith("openclip:ViT-B-16")
