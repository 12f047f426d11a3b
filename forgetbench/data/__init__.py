"""Datasets: the registry, the mini world, the real datasets read from disk and those installed packages ship."""
from .base import DATASETS, ArraySplit, ImageDataset, get_dataset
from . import mini_datasets  # noqa: F401  (registers mini/*)
from . import real  # noqa: F401  (registers cifar10, ..., imagenet-r, office-home/*: read from disk on use)
from . import packaged  # noqa: F401  (registers mnist-5k, sklearn-digits: images shipped by installed packages)

__all__ = ["DATASETS", "ArraySplit", "ImageDataset", "get_dataset"]
