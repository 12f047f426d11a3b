"""Registers the mini world's datasets (``mini/shapes``, ``mini/colours``, ...) in the dataset registry."""
from __future__ import annotations

import numpy as np

from ..cache import atomic_save_npz, cache_dir
from . import mini
from .base import DATASETS, ArraySplit, ImageDataset

#: Images per split of every generated mini dataset (the digits have 1000 / 297 / 500).
SPLIT_SIZES = {"train": 1000, "val": 300, "test": 600}

CONCEPTS = {  # dataset name -> (concept, class names)
    "mini/shapes": ("shape", mini.SHAPES),
    "mini/colours": ("colour", list(mini.COLOURS)),
    "mini/textures": ("texture", mini.TEXTURES),
    "mini/positions": ("position", mini.POSITIONS),
    "mini/counts": ("count", mini.COUNTS),
}


def _cached(name: str, split: str, make) -> ArraySplit:
    """Generated splits are cached on disk (a few MB each): regenerating all of them takes tens of seconds."""
    path = cache_dir("mini-data") / f"{name.replace('/', '_')}-{split}-v{mini.GENERATOR_VERSION}.npz"
    if path.exists():
        with np.load(path) as z:
            return ArraySplit(z["images"], z["labels"])
    images, labels = make()
    atomic_save_npz(path, images=images, labels=labels)
    return ArraySplit(images, labels)


def _concept_dataset(name: str, concept: str, classnames: list[str]) -> ImageDataset:
    builders = {
        split: (lambda split=split, n=n: _cached(name, split, lambda: mini.generate_concept_split(concept, split, n)))
        for split, n in SPLIT_SIZES.items()
    }
    return ImageDataset(
        name=name, classnames=classnames, templates=mini.TEMPLATES[concept], split_builders=builders,
        fingerprint=f"{name}:gen{mini.GENERATOR_VERSION}:{SPLIT_SIZES}",
        description=f"mini world scenes labelled by {concept} ({len(classnames)} classes)",
    )


def digits_split(split: str) -> ArraySplit:
    glyphs, labels = mini.sklearn_digits()
    idx = mini.digits_split_indices()[split]

    def make():
        return mini.render_digits(glyphs[idx], mini.stable_rng("mini", "digits", split, mini.GENERATOR_VERSION)), labels[idx]

    return _cached("mini/digits", split, make)


for _name, (_concept, _classes) in CONCEPTS.items():
    DATASETS.register(_name, lambda n=_name, c=_concept, k=_classes: _concept_dataset(n, c, k))

DATASETS.register("mini/digits", lambda: ImageDataset(
    name="mini/digits", classnames=mini.DIGITS, templates=mini.TEMPLATES["digit"],
    split_builders={s: (lambda s=s: digits_split(s)) for s in ("train", "val", "test")},
    fingerprint=f"mini/digits:gen{mini.GENERATOR_VERSION}:sklearn-digits-1797",
    description="scikit-learn's real handwritten digits, coloured, on mini world backgrounds (10 classes)",
))
