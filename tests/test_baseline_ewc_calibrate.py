"""EWC's Fisher information and penalty; the average-logit-gap calibration of absent classes."""
import numpy as np
import pytest
import torch
from torch import nn

from forgetbench.baselines.calibrate import Calibrate, average_logit_gap
from forgetbench.baselines.ewc import EWC, fisher_diagonal

from test_baselines import Flatten, make_batch, make_ctx, single_thread, tiny_dataset  # noqa: F401  (fixture)


def test_fisher_matches_closed_form_is_non_negative_and_zero_for_unused_parameters():
    torch.manual_seed(0)
    encoder, head = Flatten(4), nn.Linear(4, 3, bias=False)
    xs, ys = torch.randn(5, 3, 8, 8), [0, 2, 1, 1, 0]
    fisher = fisher_diagonal(encoder, head, ((x[None], y) for x, y in zip(xs, ys)),
                             [encoder.proj.weight, encoder.proj.bias, encoder.unused])
    # d log p_y / d A = W^T (e_y - p) x^T for logits = W (A x + c)
    A, c, W = (t.detach().numpy().astype(np.float64) for t in (encoder.proj.weight, encoder.proj.bias, head.weight))
    fa, fc = np.zeros_like(A), np.zeros_like(c)
    for x, y in zip(xs.flatten(1).numpy().astype(np.float64), ys):
        z = W @ (A @ x + c)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        g = W.T @ (np.eye(3)[y] - p)
        fa += np.outer(g, x) ** 2
        fc += g ** 2
    np.testing.assert_allclose(fisher[0].numpy(), fa / 5, rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(fisher[1].numpy(), fc / 5, rtol=1e-4, atol=1e-10)
    assert all((f >= 0).all() for f in fisher)
    assert (fisher[2] == 0).all()


def test_ewc_penalty_is_zero_at_the_start_and_the_fisher_weighted_distance_after():
    ctx = make_ctx(dataset=tiny_dataset())
    method = EWC(lam=4.0, fisher_samples=10)
    method.setup(ctx)
    names = [n for n, p in ctx.student.named_parameters() if p.requires_grad]
    assert (method.fisher[names.index("unused")] == 0).all()
    assert any(f.sum() > 0 for f in method.fisher)
    assert method.loss(ctx, make_batch(ctx)).item() == 0.0
    delta = 0.1 * torch.randn_like(ctx.student.proj.weight)
    with torch.no_grad():
        ctx.student.proj.weight.add_(delta)
    expected = 0.5 * 4.0 * (method.fisher[names.index("proj.weight")] * delta ** 2).sum()
    assert method.loss(ctx, make_batch(ctx)).item() == pytest.approx(expected.item(), rel=1e-5)


def _fisher(text: bool, labels_seed: int):
    """EWC's Fisher with the fine-tune training labels shuffled by ``labels_seed`` (images unchanged)."""
    dataset = tiny_dataset((6, 6, 6))
    split = dataset.split("train")
    split.labels = np.random.default_rng(labels_seed).permutation(split.labels)
    ctx = make_ctx(dataset=dataset, text=text)
    torch.manual_seed(0)  # the run's seed
    method = EWC(fisher_samples=8)
    method.setup(ctx)
    return method.fisher


@pytest.mark.parametrize("text", [True, False])
def test_ewc_fisher_does_not_depend_on_the_fine_tune_labels(text):
    """With a text tower: the pre-training (image-to-caption) objective on reference scenes; without: the initial
    head's own predicted labels. Either way, relabelling the fine-tune images changes nothing."""
    a, b = _fisher(text, 1), _fisher(text, 2)
    assert any(f.sum() > 0 for f in a)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_ewc_fisher_of_a_clip_model_is_the_caption_likelihood_on_reference_scenes():
    from forgetbench.baselines.ewc import caption_samples

    ctx = make_ctx(dataset=tiny_dataset())
    head, samples = caption_samples(ctx, 6, "mini-world", 1)
    torch.manual_seed(0)
    method = EWC(fisher_samples=6)
    method.setup(ctx)
    params = [p for p in ctx.student.parameters() if p.requires_grad]
    expected = fisher_diagonal(ctx.student, head, samples, params)
    for x, y in zip(method.fisher, expected):
        assert torch.allclose(x, y)
    assert head.out_features <= 6 and all(0 <= y < head.out_features for _, y in samples)


def test_average_logit_gap_by_hand():
    logits = np.array([[5.0, 1.0, 3.0, -1.0, 0.0],
                       [2.0, 4.0, 0.0, 1.0, -3.0]])
    labels = np.array([0, 1])
    seen = np.array([True, True, True, False, False])
    # seen non-ground-truth means: (1 + 3) / 2 = 2 and (2 + 0) / 2 = 1 -> 1.5; absent means: -0.5 and -1 -> -0.75
    assert average_logit_gap(logits, labels, seen) == pytest.approx(1.5 - (-0.75))
    assert average_logit_gap(logits, labels, np.ones(5, dtype=bool)) == 0.0
    with pytest.raises(ValueError, match="seen class"):
        average_logit_gap(logits, np.array([3, 1]), seen)


def _logits(ctx, dataset):
    from forgetbench.features import loader

    with torch.no_grad():
        (x, y), = list(loader(dataset.split("train"), ctx.model.preprocess, 1000))
        return ctx.head(ctx.student(x)).numpy(), y.numpy()


def test_calibrate_shifts_absent_classes_by_the_gap_and_is_a_no_op_when_all_are_seen():
    dataset = tiny_dataset((5, 0, 7, 0))  # classes 1 and 3 have no training sample
    ctx = make_ctx(n_classes=4, dataset=dataset)
    with torch.no_grad():
        ctx.head.bias.copy_(torch.tensor([0.5, -1.0, 0.2, 0.1]))
    logits, labels = _logits(ctx, dataset)
    gamma = average_logit_gap(logits, labels, np.array([True, False, True, False]))
    assert gamma != 0
    Calibrate().finalize(ctx)
    np.testing.assert_allclose(ctx.head.bias.detach().numpy(), [0.5, -1.0 + gamma, 0.2, 0.1 + gamma], rtol=1e-6)
    assert ctx.state["calibrate_gamma"] == pytest.approx(gamma)

    full = make_ctx(n_classes=3, dataset=tiny_dataset((4, 4, 4)))
    before = full.head.bias.detach().clone()
    Calibrate().finalize(full)
    assert torch.equal(full.head.bias.detach(), before) and full.state["calibrate_gamma"] == 0.0
