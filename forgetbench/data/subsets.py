"""Subsets of a dataset: class subsets (the steps of a class-split sequence, the seen part of the absent-class
protocol) and seeded samples of its splits (a protocol sized for a CPU)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .base import ImageDataset, split_labels


class ClassSubset(torch.utils.data.Dataset):
    """The samples of ``split`` whose label is in ``classes``, in split order.

    ``relabel=True`` numbers them 0..len(classes)-1 in the order of ``classes`` (a step of a class-split sequence has
    its own label space); ``relabel=False`` keeps the parent's labels (absent classes stay in the label space).
    """

    def __init__(self, split: torch.utils.data.Dataset, classes: Sequence[int], relabel: bool):
        parent = split_labels(split)
        self.split = split
        self.indices = np.flatnonzero(np.isin(parent, classes))
        kept = parent[self.indices]
        if relabel:
            lookup = np.full(int(max(classes)) + 1, -1, dtype=np.int64)
            lookup[np.asarray(classes)] = np.arange(len(classes))
            kept = lookup[kept]
        self.labels = kept

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, _ = self.split[int(self.indices[i])]
        return image, int(self.labels[i])


def class_subset(dataset: ImageDataset, classes: Sequence[int], relabel: bool, name: str) -> ImageDataset:
    """A view of ``dataset`` restricted to ``classes`` in every split; its fingerprint (hence every feature-cache key)
    names the classes and the labelling."""
    classes = [int(c) for c in classes]
    n = len(dataset.classnames)
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) >= n:
        raise DataError(f"class subset of {dataset.name!r}: expected distinct class indices in [0, {n}), got {classes}")
    return ImageDataset(
        name=name,
        classnames=[dataset.classnames[c] for c in classes] if relabel else list(dataset.classnames),
        templates=dataset.templates,
        split_builders={s: (lambda s=s: ClassSubset(dataset.split(s), classes, relabel)) for s in dataset.split_names},
        fingerprint=f"{dataset.fingerprint}|classes={classes}|relabel={relabel}",
        description=f"classes {classes} of {dataset.name}",
    )


def class_splits(dataset: ImageDataset, tasks: int, seed: int | None) -> list[list[int]]:
    """``tasks`` equal groups of class indices; class order a seeded permutation (``seed=None``: the dataset's own)."""
    n = len(dataset.classnames)
    if tasks > n or n % tasks:
        raise DataError(f"cannot split the {n} classes of {dataset.name!r} into {tasks} equal groups; choose a "
                        f"number of tasks that divides {n}")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    return [sorted(int(c) for c in group) for group in np.split(order, tasks)]


class SampleSubset(torch.utils.data.Dataset):
    """``n`` samples of ``split`` drawn without replacement by a seeded permutation, kept in split order."""

    def __init__(self, split: torch.utils.data.Dataset, n: int, seed: int):
        perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).numpy()
        self.split = split
        self.indices = np.sort(perm[:n])
        self.labels = split_labels(split)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.split[int(self.indices[i])]


def sample_subset(dataset: ImageDataset, sizes: dict[str, int], seed: int = 0) -> ImageDataset:
    """A view of ``dataset`` with ``sizes[split]`` images of each split it names (a seeded sample: the same images on
    every machine), the other splits whole; its fingerprint names the sizes and the seed."""
    for split, n in sizes.items():
        available = len(dataset.split(split))
        if n > available:
            raise DataError(f"subset of {dataset.name!r}: {n} images of its {split} split asked for, it has "
                            f"{available}")

    def build(split: str):
        whole = dataset.split(split)
        return SampleSubset(whole, sizes[split], seed) if split in sizes else whole

    return ImageDataset(
        name=dataset.name, classnames=dataset.classnames, templates=dataset.templates,
        split_builders={s: (lambda s=s: build(s)) for s in dataset.split_names},
        fingerprint=f"{dataset.fingerprint}|subset={dict(sorted(sizes.items()))}|seed={seed}",
        description=f"{', '.join(f'{n} {s}' for s, n in sizes.items())} images of "
                    f"{dataset.description or dataset.name}",
    )
