"""The Dataset noun: named splits of (image, label) with class names and CLIP-style prompt templates."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..registry import Registry

#: Every dataset forgetbench knows, by name (``mini/shapes``, ``cifar10``, ...). Entries are zero-argument builders.
DATASETS = Registry("dataset")


class ArraySplit(torch.utils.data.Dataset):
    """A split held in memory as uint8 HWC images; items are (PIL image, label) like torchvision datasets."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError("images must be uint8 with shape [N, H, W, 3]")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i]), int(self.labels[i])


def split_labels(split: torch.utils.data.Dataset) -> np.ndarray:
    """A split's labels without decoding its images when it keeps them (``labels``, or torchvision's ``targets``)."""
    for attr in ("labels", "targets"):
        if hasattr(split, attr):
            return np.asarray(getattr(split, attr), dtype=np.int64)
    return np.asarray([split[i][1] for i in range(len(split))], dtype=np.int64)


@dataclass
class ImageDataset:
    """A classification dataset: lazily built splits, class names and zero-shot prompt templates.

    ``fingerprint`` changes whenever the images or labels of any split would change (generator version, source
    files): it is part of every feature-cache key.
    """

    name: str
    classnames: Sequence[str]
    templates: Sequence[str]
    split_builders: dict[str, Callable[[], torch.utils.data.Dataset]]
    fingerprint: str
    description: str = ""
    _built: dict = field(default_factory=dict, repr=False)

    @property
    def split_names(self) -> list[str]:
        return list(self.split_builders)

    def split(self, name: str) -> torch.utils.data.Dataset:
        if name not in self.split_builders:
            raise DataError(
                f"dataset {self.name!r} has no split {name!r} (it has: {', '.join(self.split_builders) or 'none'})"
            )
        if name not in self._built:
            self._built[name] = self.split_builders[name]()
        return self._built[name]

    def labels(self, split: str) -> np.ndarray:
        return split_labels(self.split(split))

    def prompts(self, classname: str) -> list[str]:
        return [t.format(classname) for t in self.templates]


def get_dataset(name: str) -> ImageDataset:
    """Build a registered dataset by name (unknown names fail with did-you-mean suggestions)."""
    return DATASETS.get(name)()
