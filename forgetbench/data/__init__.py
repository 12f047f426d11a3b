"""Datasets: the registry, the mini world and the real datasets read from disk."""
from .base import DATASETS, ArraySplit, ImageDataset, get_dataset
from . import mini_datasets  # noqa: F401  (registers mini/*)
from . import real  # noqa: F401  (registers cifar10, ..., imagenet-r, office-home/*: read from disk on use)

__all__ = ["DATASETS", "ArraySplit", "ImageDataset", "get_dataset"]
