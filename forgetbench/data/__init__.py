"""Datasets: the registry, the mini world and (later) real datasets from disk."""
from .base import DATASETS, ArraySplit, ImageDataset, get_dataset
from . import mini_datasets  # noqa: F401  (registers mini/*)

__all__ = ["DATASETS", "ArraySplit", "ImageDataset", "get_dataset"]
