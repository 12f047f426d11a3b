"""Every registered method -- found in the registry, not listed by hand, so a new method is tested the day it is added
-- runs through the real training loop on the mini CLIP architecture (untrained weights: the shipped ones are not
needed to check that the hooks fit the loop, open_clip's shapes and the text tower)."""
import copy

import pytest
import torch

from forgetbench.data import get_dataset
from forgetbench.evaluate.probe import zeroshot_weights
from forgetbench.heads import zeroshot_head
from forgetbench.methods import METHODS, FinetuneContext
from forgetbench.models.mini_clip import CONFIG_NAME, build_untrained, preprocess_for
from forgetbench.models.openclip import wrap_openclip
from forgetbench.train import finetune

from pipeline_helpers import tiny_task
from test_baselines import single_thread  # noqa: F401  (fixture)

#: Smaller settings for the methods whose setup alone would take seconds at their defaults (not a list of methods).
CHEAP = {"ewc": {"fisher_samples": 4}, "zscl": {"n_ref": 8, "ref_batch": 4, "snapshots": 3}}


@pytest.fixture(scope="module")
def world():
    clip = build_untrained(0)
    model = wrap_openclip("mini-clip-untrained", CONFIG_NAME, clip, preprocess_for(clip))
    target = get_dataset("test/shapes")
    return model, target, zeroshot_weights(model, target)


@pytest.mark.parametrize("name", [n for n in METHODS.names() if not n.startswith("test-")  # not the tests' own
                                  and getattr(METHODS.get(n), "protocol", None) is None])  # prompt methods: their own test
def test_every_method_runs_in_the_training_loop(world, name):
    model, target, text = world
    task = tiny_task(steps=2, batch_size=16)
    cls = METHODS.get(name)
    method = cls(**{k: v for k, v in CHEAP.get(name, {}).items() if k in cls.hyperparameters})
    ctx = FinetuneContext.start(model, method, zeroshot_head(text, model.logit_scale, "cpu"), task, target, "cpu")
    start = copy.deepcopy(ctx.student.state_dict())
    log = finetune(ctx, method, task.train, target.split("train"), seed=0, progress=False)
    changed = any(not torch.equal(v, start[k]) for k, v in ctx.student.state_dict().items())
    if method.trains_encoder:
        assert log.steps == 2 and torch.isfinite(torch.tensor(log.final_loss)) and changed
    else:  # a frozen encoder: no step, nothing changed
        assert log.steps == 0 and not changed
