"""Class-balanced batch sampling with hard class mining (the batches Proxy-FDA trains on).

A batch holds ``m`` classes x ``n`` images. With hard mining the ``m`` classes are chosen to be *similar* to each other
(by a class-to-class similarity matrix computed once from reference features), so that the k-NN graph of a batch spans
near-by classes, which is where the structure a fine-tune can destroy lives.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch

from .errors import DataError, SpecError


def class_similarity_from_features(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[C, C] cosine similarity of the class means of L2-normalised features; C = max label + 1.

    A class without samples has a zero mean, hence similarity 0 to every class (and to itself).
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or labels.shape != (len(features),):
        raise DataError(f"class similarity needs features [N, D] and labels [N]; got {features.shape} and "
                        f"{labels.shape}")
    if len(labels) == 0:
        raise DataError("class similarity needs at least one labelled feature")
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    n_classes = int(labels.max()) + 1
    means = np.zeros((n_classes, f.shape[1]))
    np.add.at(means, labels, f)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means @ means.T


class ClassBalancedBatchSampler(torch.utils.data.Sampler):
    """Yields batches (lists of dataset indices) of ``m_classes`` classes x ``n_per_class`` samples.

    - ``hard_mining`` (needs ``class_similarity``): each batch starts from a seed class (seed classes cycle through a
      shuffled list, so every class seeds equally often); the other ``m - 1`` classes are drawn without replacement
      with probability proportional to ``exp(similarity to the seed / temperature)`` (Gumbel top-k), i.e. mostly the
      seed's nearest classes, with some randomness. Without mining they are drawn uniformly.
    - Small-shot fallbacks: a class with fewer samples than it needs in a batch is sampled with replacement; with
      fewer than ``m`` classes, every batch holds all of them and the ``m * n`` places are shared out as evenly as
      possible (the extra ones to randomly chosen classes), so the batch size never changes.
    - Samples of a class are visited in a shuffled order before any repeats, so an epoch covers the data.
    - ``num_batches`` defaults to ceil(N / (m * n)), one epoch's worth. Iterating twice gives the same batches: the
      batches depend only on ``seed`` (the training loop passes a new seed every epoch).
    """

    def __init__(self, labels, m_classes: int, n_per_class: int, class_similarity: Optional[np.ndarray] = None,
                 seed: int = 0, hard_mining: bool = True, num_batches: Optional[int] = None,
                 temperature: float = 0.1):
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.labels) == 0:
            raise DataError("class-balanced sampling needs a non-empty training split")
        for name, value in (("m", m_classes), ("n", n_per_class)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise SpecError(f"class-balanced sampling: {name} must be a positive integer, got {value!r}")
        if temperature <= 0:
            raise SpecError(f"class-balanced sampling: temperature must be > 0, got {temperature!r}")
        self.classes = np.unique(self.labels)
        self.batch_size = int(m_classes) * int(n_per_class)
        self.m = min(int(m_classes), len(self.classes))
        self.n = int(n_per_class)
        self.seed = int(seed)
        self.temperature = float(temperature)
        if class_similarity is not None:
            class_similarity = np.asarray(class_similarity, dtype=np.float64)
            need = int(self.classes.max()) + 1
            if class_similarity.ndim != 2 or class_similarity.shape[0] != class_similarity.shape[1] \
                    or class_similarity.shape[0] < need:
                raise DataError(f"class similarity must be a square matrix covering labels 0..{need - 1}; "
                                f"got shape {class_similarity.shape}")
        self.similarity = class_similarity
        self.hard_mining = bool(hard_mining) and class_similarity is not None
        self.num_batches = num_batches if num_batches is not None else math.ceil(len(self.labels) / self.batch_size)
        self._members = {int(c): np.flatnonzero(self.labels == c) for c in self.classes}

    def __len__(self) -> int:
        return self.num_batches

    def _pick_classes(self, seed_class: int, rng: np.random.Generator) -> np.ndarray:
        if self.m == len(self.classes):
            return self.classes
        others = self.classes[self.classes != seed_class]
        if self.hard_mining:
            scores = self.similarity[seed_class, others] / self.temperature + rng.gumbel(size=len(others))
            chosen = others[np.argsort(-scores, kind="stable")[: self.m - 1]]
        else:
            chosen = rng.choice(others, self.m - 1, replace=False)
        return np.concatenate([[seed_class], chosen])

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed)
        queues = {c: rng.permutation(idx) for c, idx in self._members.items()}
        cursor = {c: 0 for c in queues}
        seeds: list[int] = []
        for _ in range(self.num_batches):
            if not seeds:
                seeds = list(rng.permutation(self.classes))
            batch: list[int] = []
            chosen = self._pick_classes(int(seeds.pop()), rng)
            counts = np.full(len(chosen), self.batch_size // len(chosen))
            counts[rng.permutation(len(chosen))[: self.batch_size % len(chosen)]] += 1
            for c, n in zip(chosen.tolist(), counts.tolist()):
                members = self._members[c]
                if len(members) < n:  # small-shot class: with replacement
                    batch.extend(int(i) for i in rng.choice(members, n, replace=True))
                    continue
                if cursor[c] + n > len(members):  # start a new pass over this class
                    queues[c], cursor[c] = rng.permutation(members), 0
                batch.extend(int(i) for i in queues[c][cursor[c]: cursor[c] + n])
                cursor[c] += n
            yield batch
