"""The class-balanced batch sampler with hard class mining, and the FDA hook that builds it."""
import itertools
from collections import Counter

import numpy as np
import pytest

from forgetbench.baselines.fda import FDA
from forgetbench.errors import SpecError
from forgetbench.samplers import ClassBalancedBatchSampler, class_similarity_from_features

from test_baselines import make_ctx, single_thread, tiny_dataset  # noqa: F401  (fixture)


def grouped_similarity(n_classes=40, groups=5, seed=0):
    """Classes in `groups` clusters: similarity 0.9 inside a cluster, ~0 across, plus noise."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_classes) % groups
    sim = np.where(group[:, None] == group[None, :], 0.9, 0.0) + 0.05 * rng.standard_normal((n_classes, n_classes))
    return (sim + sim.T) / 2


def mean_batch_similarity(batches, labels, sim):
    values = []
    for b in batches:
        classes = sorted(set(labels[b].tolist()))
        values += [sim[a, c] for a, c in itertools.combinations(classes, 2)]
    return float(np.mean(values))


def test_class_similarity_is_the_cosine_of_normalised_class_means():
    feats = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1, 2])
    sim = class_similarity_from_features(feats, labels)
    means = np.array([[1.0, 0.0], [0.0, 1.0], [1 / np.sqrt(2), 1 / np.sqrt(2)]])
    np.testing.assert_allclose(sim, means @ means.T, atol=1e-12)


def test_batches_are_m_classes_by_n_samples():
    labels = np.repeat(np.arange(12), 10)
    sampler = ClassBalancedBatchSampler(labels, 4, 3, grouped_similarity(12, 3), seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == int(np.ceil(120 / 12))
    for b in batches:
        assert len(b) == 12 and len(set(b)) == 12
        assert sorted(Counter(labels[b].tolist()).values()) == [3, 3, 3, 3]


def test_hard_mining_puts_similar_classes_together():
    labels = np.repeat(np.arange(40), 8)
    sim = grouped_similarity()
    hard = list(ClassBalancedBatchSampler(labels, 8, 2, sim, seed=0, num_batches=50))
    rand = list(ClassBalancedBatchSampler(labels, 8, 2, sim, seed=0, num_batches=50, hard_mining=False))
    # 8 classes from 5 clusters of 8: hard batches are (mostly) one cluster, random ones mix them
    assert mean_batch_similarity(hard, labels, sim) > 0.6
    assert mean_batch_similarity(rand, labels, sim) < 0.35


def test_same_seed_same_batches_other_seed_other_batches():
    labels = np.repeat(np.arange(10), 6)
    sim = grouped_similarity(10, 2)
    a = ClassBalancedBatchSampler(labels, 3, 2, sim, seed=7)
    assert list(a) == list(a) == list(ClassBalancedBatchSampler(labels, 3, 2, sim, seed=7))
    assert list(a) != list(ClassBalancedBatchSampler(labels, 3, 2, sim, seed=8))


def test_small_shot_classes_and_too_few_classes_keep_the_batch_size():
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2])  # class 1 has 2 samples, class 2 one
    batches = list(ClassBalancedBatchSampler(labels, 5, 4, seed=0, num_batches=4))
    for b in batches:  # only 3 classes exist: all of them share the 5 x 4 places as evenly as possible
        counts = Counter(labels[b].tolist())
        assert len(b) == 20 and sorted(counts.values()) == [6, 7, 7]
        assert len(set(i for i in b if labels[i] == 0)) == counts[0]  # enough samples: no repeats
    with pytest.raises(SpecError, match="n must be a positive integer"):
        ClassBalancedBatchSampler(labels, 2, 0)


@pytest.mark.parametrize("n_classes, m", [(2, 2), (3, 2), (4, 2), (5, 3), (10, 5), (100, 16)])
def test_fda_batches_hold_fewer_classes_than_the_dataset(n_classes, m):
    """The automatic m: half the classes (at least 2, at most the paper's 16), n = batch_size // m."""
    labels = np.repeat(np.arange(n_classes), 40)
    method = FDA()
    method._class_similarity = grouped_similarity(n_classes, max(1, n_classes // 2))
    sampler = method.batch_sampler(None, labels, batch_size=64, seed=0)
    assert (sampler.m, sampler.n) == (m, 64 // m)
    for b in sampler:
        assert len(set(labels[b].tolist())) == m
        if n_classes >= 3:
            assert m < n_classes


def test_fda_mining_picks_the_most_similar_class_on_a_three_class_target():
    labels = np.repeat(np.arange(3), 100)
    sim = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]])  # 0 and 1 alike, 2 apart
    method = FDA()
    method._class_similarity = sim
    pairs = Counter(tuple(sorted(set(labels[b].tolist()))) for b in method.batch_sampler(None, labels, 64, seed=0))
    # batches seeded by 0 or 1 hold {0, 1}; those seeded by 2 hold 2 and its nearer class, at temperature 0.1 either
    assert pairs[(0, 1)] >= 2 * max(pairs[(0, 2)], pairs[(1, 2)])


def test_fda_hook_builds_balanced_batches_from_reference_features(cache):
    ctx = make_ctx(dataset=tiny_dataset((6, 6, 6, 6)), n_classes=4)
    method = FDA(n=2)
    sampler = method.batch_sampler(ctx, ctx.train_dataset.labels("train"), batch_size=4, seed=0)
    assert sampler.m == 2 and sampler.hard_mining  # half the 4 classes
    assert method.class_similarity(ctx).shape == (4, 4)
    assert all(len(b) == 4 for b in sampler)
    assert FDA(balanced=False).batch_sampler(ctx, ctx.train_dataset.labels("train"), 4, 0) is None
