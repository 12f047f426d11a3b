"""Methods that need a text tower: FLYP, FD-Align, ZSCL (with a fake, deterministic text tower)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from forgetbench.baselines.fd_align import FDAlign, prototype_kl
from forgetbench.baselines.flyp import FLYP, clip_loss
from forgetbench.baselines.zscl import ZSCL
from forgetbench.errors import SpecError

from test_baselines import make_batch, make_ctx, single_thread, tiny_dataset  # noqa: F401  (fixture)


@pytest.mark.parametrize("cls", [FLYP, FDAlign, ZSCL])
def test_text_methods_refuse_models_without_a_text_tower(cls):
    with pytest.raises(SpecError, match="needs a model with a text tower"):
        cls().setup(make_ctx(text=False, dataset=tiny_dataset()))


def test_clip_loss_by_hand():
    img, txt = torch.randn(4, 3), torch.randn(4, 3)
    logits = 5.0 * (img / img.norm(dim=1, keepdim=True)) @ (txt / txt.norm(dim=1, keepdim=True)).T
    logits = logits.numpy().astype(np.float64)

    def ce(z):
        return np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))

    assert clip_loss(img, txt, torch.tensor(5.0)).item() == pytest.approx((ce(logits) + ce(logits.T)) / 2, rel=1e-5)


def test_flyp_pulls_images_towards_their_class_prompts():
    ctx = make_ctx(dataset=tiny_dataset())
    method = FLYP()
    groups = method.setup(ctx)
    assert groups[0]["params"][0].exp().item() == pytest.approx(10.0)
    assert method.text.shape == (3, 2, 6)
    batch = make_batch(ctx, n=9)
    batch.labels = torch.tensor([0, 1, 2] * 3)
    matched = method.text[batch.labels].mean(1)  # each image at its class's prompts
    batch.features = matched
    good = method.loss(ctx, batch).item()
    batch.features = matched[torch.tensor([1, 2, 0] * 3)]
    assert good < method.loss(ctx, batch).item()


def test_fd_align_prototypes_kl_and_zero_at_the_reference():
    ctx = make_ctx(dataset=tiny_dataset())
    method = FDAlign()
    method.setup(ctx)
    assert method.prototypes.shape == (6, 6)  # k = 20 capped at 3 classes x 2 templates
    small = FDAlign(k=2)
    small.setup(ctx)
    assert small.prototypes.shape == (2, 6)
    batch = make_batch(ctx)
    assert method.loss(ctx, batch).item() == pytest.approx(0.0, abs=1e-7)
    r, s, P = torch.randn(5, 6), torch.randn(5, 6), torch.randn(3, 6)
    lp = F.log_softmax(F.normalize(r, dim=-1) @ P.T, -1).numpy()
    lq = F.log_softmax(F.normalize(s, dim=-1) @ P.T, -1).numpy()
    assert prototype_kl(r, s, P).item() == pytest.approx(np.sum(np.exp(lp) * (lp - lq)) / 15, rel=1e-5)


def test_zscl_distillation_is_zero_at_the_start_and_cycles_through_reference_images():
    ctx = make_ctx(dataset=tiny_dataset())
    method = ZSCL(n_ref=8, ref_batch=3)
    method.setup(ctx)
    assert method.teacher.shape == (8, 8)
    assert method.loss(ctx, make_batch(ctx)).item() == pytest.approx(0.0, abs=1e-6)
    method._cursor = 0
    seen = method.next_indices() + method.next_indices() + method.next_indices()
    assert sorted(seen[:8]) == list(range(8)) and seen[8] == seen[0]  # every image once, then round again
    with torch.no_grad():
        ctx.student.proj.weight.add_(torch.randn_like(ctx.student.proj.weight))
    assert method.loss(ctx, make_batch(ctx)).item() > 0


def test_zscl_weight_ensemble_is_the_average_of_start_and_merged_weights():
    ctx = make_ctx(dataset=tiny_dataset())
    method = ZSCL(n_ref=4, avg_freq=2)
    method.setup(ctx)
    snapshots = [copy.deepcopy(ctx.student.proj.weight.detach())]
    for step in range(1, 5):  # merges after steps 1 and 3 (ZSCL's iterations 0 and 2), then the final step 4
        with torch.no_grad():
            ctx.student.proj.weight.add_(torch.randn_like(ctx.student.proj.weight))
            ctx.head.weight.add_(1.0)
        snapshots.append(copy.deepcopy(ctx.student.proj.weight.detach()))
        method.after_step(ctx, step)
    method.finalize(ctx)
    expected = (snapshots[0] + snapshots[1] + snapshots[3] + snapshots[4]) / 4
    assert torch.allclose(ctx.student.proj.weight, expected, atol=1e-6)
    head0 = ctx.head_initial["weight"]
    assert torch.allclose(ctx.head.weight, (head0 + head0 + 1 + head0 + 3 + head0 + 4) / 4, atol=1e-6)
