"""Methods that need a text tower: FLYP, FD-Align, ZSCL (with a fake, deterministic text tower)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from forgetbench.baselines.fd_align import FDAlign, prototype_kl
from forgetbench.baselines.flyp import FLYP
from forgetbench.baselines.zscl import ZSCL
from forgetbench.errors import SpecError

from test_baselines import make_batch, make_ctx, single_thread, tiny_dataset  # noqa: F401  (fixture)


@pytest.mark.parametrize("cls", [FLYP, FDAlign, ZSCL])
def test_text_methods_refuse_models_without_a_text_tower(cls):
    with pytest.raises(SpecError, match="needs a model with a text tower"):
        cls().setup(make_ctx(text=False, dataset=tiny_dataset()))


def test_flyp_counts_same_class_prompts_as_positives_on_a_batch_with_repeated_labels():
    ctx = make_ctx(dataset=tiny_dataset())
    method = FLYP()
    method.setup(ctx)
    batch = make_batch(ctx, n=6)
    batch.labels = torch.tensor([0, 0, 1, 1, 2, 0])
    loss = method.loss(ctx, batch).item()
    # by hand, whatever template each image drew: the same-class pairs are the positives, uniformly weighted
    gen = torch.Generator().manual_seed(torch.initial_seed() % 2 ** 63)  # the draw FLYP made
    template = torch.randint(method.text.shape[1], (6,), generator=gen)
    txt = method.text[batch.labels, template].numpy().astype(np.float64)
    img = F.normalize(batch.features.detach(), dim=-1).numpy().astype(np.float64)
    z = 10.0 * img @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    same = (batch.labels[:, None] == batch.labels[None, :]).numpy().astype(np.float64)

    def uniform_ce(z, target):
        log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
        return np.mean(-(target / target.sum(1, keepdims=True) * log_softmax).sum(1))

    assert loss == pytest.approx((uniform_ce(z, same) + uniform_ce(z.T, same.T)) / 2, rel=1e-5)
    plain = (uniform_ce(z, np.eye(6)) + uniform_ce(z.T, np.eye(6))) / 2  # FLYP's code: same-class prompts negatives
    assert abs(loss - plain) > 1e-3


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


@pytest.mark.parametrize("n_steps, snapshots", [(188, 10), (64, 10), (20, 5), (3, 10)])
def test_zscl_weight_ensemble_holds_the_number_of_snapshots_asked(n_steps, snapshots):
    ctx = make_ctx(dataset=tiny_dataset())
    method = ZSCL(n_ref=4, snapshots=snapshots)
    method.setup(ctx)
    method.start_average(ctx, n_steps)
    taken = [ctx.student.proj.weight.detach().clone()]  # the initial weights are the first snapshot
    for step in range(1, n_steps + 1):
        with torch.no_grad():
            ctx.student.proj.weight.add_(torch.randn_like(ctx.student.proj.weight))
            ctx.head.weight.add_(1.0)
        method.after_step(ctx, step)
        if step in method._merge_steps:
            taken.append(ctx.student.proj.weight.detach().clone())
    method.finalize(ctx)
    assert method._count == min(snapshots, n_steps + 1) == len(taken)  # short runs: every state
    assert method._merge_steps[-1] == n_steps  # the last state is one of them
    assert torch.allclose(ctx.student.proj.weight, torch.stack(taken).mean(0), atol=1e-5)
    gaps = np.diff([0, *method._merge_steps])
    assert gaps.max() - gaps.min() <= 1  # evenly spaced over the run
    head0 = ctx.head_initial["weight"]
    assert torch.allclose(ctx.head.weight, head0 + float(np.mean([0, *method._merge_steps])), atol=1e-4)


def test_zscl_reference_images_are_none_of_the_evaluated_test_images():
    """The distillation images (pre-training-like scenes) share no image with any mini dataset's test split."""
    from forgetbench.baselines.zscl import distillation_pairs
    from forgetbench.data import get_dataset
    from forgetbench.tasks import load_task

    images, _ = distillation_pairs("mini-world", 512, 1)
    reference = {im.tobytes() for im in images}
    task = load_task("mini-noise")
    for name in [task.finetune.dataset, *task.evaluate.datasets]:
        split = get_dataset(name).split("test")
        tested = {np.asarray(split[i][0].convert("RGB")).tobytes() for i in range(len(split))}
        assert not reference & tested, name


def _task_ctx(heldout):
    """A context whose task holds out ``heldout`` (registered datasets), the fine-tune dataset tiny_dataset's."""
    from types import SimpleNamespace

    ctx = make_ctx(dataset=tiny_dataset())
    ctx.task.evaluate = SimpleNamespace(datasets=list(heldout))
    return ctx


def test_lwf_distils_over_the_held_out_datasets_class_names_too():
    from forgetbench.baselines.lwf import LwF
    from forgetbench.data import get_dataset

    ctx = _task_ctx(["mini/colours", "mini/shapes"])
    method = LwF()
    method.setup(ctx)
    # the initial head of the 3 target classes, then one zero-shot head per held-out dataset, over its class names
    assert [h.out_features for h in method.heads] == [3, *(len(get_dataset(n).classnames)
                                                          for n in ["mini/colours", "mini/shapes"])]
    narrow = LwF(vocabulary="target")
    narrow.setup(ctx)
    assert len(narrow.heads) == 1
    assert method.loss(ctx, make_batch(ctx)).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        ctx.student.proj.weight.add_(torch.randn_like(ctx.student.proj.weight))
    # a drift the held-out heads see: the wider loss is the mean of every head's KL
    batch = make_batch(ctx)
    wide = method.loss(ctx, batch).item()
    from forgetbench.baselines.lwf import distillation_kl

    frozen = ctx.frozen(batch.images)
    kls = [distillation_kl(h(frozen), h(batch.features), 2.0).item() for h in method.heads]
    assert wide == pytest.approx(np.mean(kls), rel=1e-5) and kls[1] > 0


def test_fd_align_prototypes_span_the_held_out_datasets_prompts():
    from forgetbench.baselines.flyp import prompt_embeddings, vocabulary_datasets

    ctx = _task_ctx(["mini/colours"])
    datasets = vocabulary_datasets(ctx)
    assert [d.name for d in datasets] == ["unit/tiny", "mini/colours"]
    n_prompts = sum(len(d.classnames) * len(d.templates) for d in datasets)
    method = FDAlign(k=1000)  # k capped at the number of distinct prompts: all of them are prototypes
    method.setup(ctx)
    assert method.prototypes.shape[0] == n_prompts > 6
    colours = prompt_embeddings(ctx, datasets[1]).flatten(0, 1) * ctx.model.logit_scale
    # every held-out prompt is one of the prototypes
    dist = torch.cdist(colours.double(), method.prototypes.double())
    assert dist.min(1).values.max().item() < 1e-3
    narrow = FDAlign(k=1000, vocabulary="target")
    narrow.setup(ctx)
    assert narrow.prototypes.shape[0] == 6
