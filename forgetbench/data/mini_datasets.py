"""Registers the mini world's datasets (``mini/shapes``, ``mini/colours``, ...) in the dataset registry."""
from __future__ import annotations

import numpy as np

from ..cache import atomic_save_npz, cache_dir
from . import mini
from .base import DATASETS, ArraySplit, ImageDataset
from .mini_attributes import ATTRIBUTE_VERSION, ATTRIBUTES, generate_attribute_split

#: Images per split of every generated mini concept dataset (the digits have 1000 / 297 / 500).
SPLIT_SIZES = {"train": 1000, "val": 300, "test": 600}
#: Images per split of the attribute datasets (the fine-tune targets): thousands, so that a fine-tune's gain is real;
#: 1,000 validation and test images give about +-3 points (95%) per accuracy.
ATTRIBUTE_SPLIT_SIZES = {"train": 3000, "val": 1000, "test": 1000}

CONCEPTS = {  # dataset name -> (concept, class names)
    "mini/shapes": ("shape", mini.SHAPES),
    "mini/colours": ("colour", list(mini.COLOURS)),
    "mini/textures": ("texture", mini.TEXTURES),
    "mini/positions": ("position", mini.POSITIONS),
    "mini/counts": ("count", mini.COUNTS),
}


def _cached(name: str, split: str, make, version: str = f"v{mini.GENERATOR_VERSION}") -> ArraySplit:
    """Generated splits are cached on disk (a few MB each): regenerating all of them takes tens of seconds."""
    path = cache_dir("mini-data") / f"{name.replace('/', '_')}-{split}-{version}.npz"
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


def _attribute_dataset(name: str) -> ImageDataset:
    key = name.removeprefix("mini/")
    attribute = ATTRIBUTES[key]
    version = f"{mini.GENERATOR_VERSION}.{ATTRIBUTE_VERSION}"  # the drawing's version and the labelling's

    def build(split: str, n: int) -> ArraySplit:
        return _cached(name, split, lambda: generate_attribute_split(attribute, key, split, n)[:2], f"{n}-v{version}")

    return ImageDataset(
        name=name, classnames=list(attribute.classnames), templates=list(attribute.templates),
        split_builders={s: (lambda s=s, n=n: build(s, n)) for s, n in ATTRIBUTE_SPLIT_SIZES.items()},
        fingerprint=f"{name}:gen{version}:{ATTRIBUTE_SPLIT_SIZES}",
        description=f"mini world scenes labelled by {key} ({len(attribute.classnames)} classes; never named in "
                    f"pre-training captions: a fine-tune target with headroom)",
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

for _key in ATTRIBUTES:
    DATASETS.register(f"mini/{_key}", lambda n=f"mini/{_key}": _attribute_dataset(n))
