"""Every method of the baseline library runs through the real training loop on the mini CLIP architecture
(untrained weights: the shipped ones are not needed to check that the hooks fit the loop, open_clip's shapes and the
text tower)."""
import copy

import pytest
import torch

from forgetbench.data import get_dataset
from forgetbench.evaluate.probe import zeroshot_weights
from forgetbench.methods import METHODS, FinetuneContext
from forgetbench.models.mini_clip import CONFIG_NAME, build_untrained, preprocess_for
from forgetbench.models.openclip import wrap_openclip
from forgetbench.train import Head, finetune

from pipeline_helpers import tiny_task
from test_baselines import single_thread  # noqa: F401  (fixture)

OURS = ["fda", "proxy-fda", "aft", "feature-l2", "lwf", "ewc", "flyp", "fd-align", "zscl", "calibrate"]
CHEAP = {"ewc": {"fisher_samples": 4}, "zscl": {"n_ref": 8, "ref_batch": 4, "avg_freq": 1}}


@pytest.fixture(scope="module")
def world():
    clip = build_untrained(0)
    model = wrap_openclip("mini-clip-untrained", CONFIG_NAME, clip, preprocess_for(clip))
    target = get_dataset("test/shapes")
    return model, target, torch.from_numpy(zeroshot_weights(model, target)).float()


@pytest.mark.parametrize("name", OURS)
def test_method_runs_in_the_training_loop(world, name):
    model, target, text = world
    task = tiny_task(steps=2, batch_size=16)
    method = METHODS.get(name)(**CHEAP.get(name, {}))
    student = copy.deepcopy(model.visual)
    for p in student.parameters():
        p.requires_grad_(method.trains_encoder)
    head = Head(model.feature_dim, len(target.classnames))
    with torch.no_grad():
        head.weight.copy_(text * model.logit_scale)
        head.bias.zero_()
    ctx = FinetuneContext(student=student, head=head, reference=model.visual, model=model, task=task,
                          head_initial=copy.deepcopy(head.state_dict()), train_dataset=target)
    start = copy.deepcopy(student.state_dict())
    log = finetune(ctx, method, task.train, target.split("train"), seed=0, progress=False)
    changed = any(not torch.equal(v, start[k]) for k, v in student.state_dict().items())
    assert log.steps == 2 and torch.isfinite(torch.tensor(log.final_loss)) and changed
