"""Split rules for the real datasets, and the split view every one of them hands out.

Every real dataset has train / val / test splits:

- where the dataset defines all three (DTD partition 1, Flowers-102, FGVC-Aircraft), they are used as they are;
- where it defines train and test only, **val is 10% of train (at most 20,000 images), drawn with seed 0** and removed
  from train: exactly ``torch.utils.data.random_split(train, [n - k, k], generator=torch.Generator().manual_seed(0))``
  with ``k = min(int(0.1 * n), 20000)``, the rule of the LDIFS / wise-ft code (``split_train_into_train_val``), so the
  validation images are the ones those papers held out when the train set is in the same order;
- where it defines no split (EuroSAT, RESISC45, Caltech-101, SUN397, the ImageNet variants, Office-Home), **test is
  20% of all images (same rule, seed 0, no cap)**, in the order of sorted file paths, and val is taken from the rest
  as above.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ...errors import DataError

VAL_FRACTION, VAL_CAP = 0.1, 20_000
TEST_FRACTION = 0.2
SPLIT_SEED = 0
RULE_ID = f"val{VAL_FRACTION}cap{VAL_CAP}-test{TEST_FRACTION}-seed{SPLIT_SEED}"  # part of every fingerprint
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Part:
    """One official part of a dataset (e.g. its train set): positions in ``source`` and their labels."""

    source: torch.utils.data.Dataset  # items are (image, anything); the label given here is the one used
    indices: np.ndarray
    labels: np.ndarray

    def take(self, positions: np.ndarray) -> "Part":
        positions = np.sort(positions)
        return Part(self.source, self.indices[positions], self.labels[positions])


class SplitView(torch.utils.data.Dataset):
    """A split: (RGB PIL image, label) items; ``labels`` without decoding any image."""

    def __init__(self, part: Part):
        self.source, self.indices = part.source, part.indices
        self.labels = np.asarray(part.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.source[int(self.indices[i])][0]
        return (image if image.mode == "RGB" else image.convert("RGB")), int(self.labels[i])


def holdout(n: int, fraction: float, cap: int | None = None, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) positions of ``range(n)``: torch's ``random_split`` into ``[n - k, k]`` with ``seed``."""
    k = int(n * fraction)
    k = min(k, cap) if cap is not None else k
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[: n - k], perm[n - k:]


def split_part(official: tuple[str, ...], part, split: str) -> Part:
    """The ``split`` (train / val / test) of a dataset whose official parts are ``official``, by the rules above.

    ``part(name)`` reads one official part; only the parts a split needs are read.
    """
    if set(official) == {"train", "val", "test"}:
        return part(split)
    if "test" in official:
        if split == "test":
            return part("test")
        pool = part("train")
    else:
        rest, held = holdout(len(part("all").labels), TEST_FRACTION)
        if split == "test":
            return part("all").take(held)
        pool = part("all").take(rest)
    keep, val = holdout(len(pool.labels), VAL_FRACTION, VAL_CAP)
    return pool.take(keep if split == "train" else val)


class FileSource(torch.utils.data.Dataset):
    """Image files read with PIL; the label slot is unused (labels live in the Part)."""

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as im:
            return im.convert("RGB"), -1


class GreyArraySource(torch.utils.data.Dataset):
    """Grey images held as a uint8 array [N, H, W] (MNIST-style datasets); ``SplitView`` hands them out as RGB."""

    def __init__(self, images: np.ndarray):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"grey images must be a uint8 array [N, H, W], got {images.dtype} {images.shape}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i]), -1  # a 2-D uint8 array is a mode "L" image


def class_folders(directory: Path, raw: Sequence[str], label_of=None) -> Part:
    """Images in ``directory/<class folder>/``; labels from the folder name (its index in ``raw``, or ``label_of``).

    The label space is fixed by ``raw``, not by the folders present, so a partial copy keeps the right labels; a
    folder that is not a known class is a DataError.
    """
    index = {name: i for i, name in enumerate(raw)}
    files, labels = [], []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        label = label_of(folder.name) if label_of else index.get(folder.name)
        if label is None:
            known = ", ".join(list(raw)[:4])
            raise DataError(f"{folder}: {folder.name!r} is not one of the {len(raw)} class folders expected here "
                            f"(e.g. {known}, ...)")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += images
        labels += [label] * len(images)
    if not files:
        raise DataError(f"{directory}: no images found in its class folders")
    return Part(FileSource(files), np.arange(len(files)), np.asarray(labels, dtype=np.int64))


def labels_by_name(names: Sequence[str], raw: Sequence[str], where: Path, normalise=lambda s: s) -> np.ndarray:
    """Labels from the on-disk class identifier of each sample, looked up in ``raw`` (the fixed label order)."""
    index = {normalise(r): i for i, r in enumerate(raw)}
    out = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        key = normalise(name)
        if key not in index:
            raise DataError(f"{where}: class {name!r} is not one of the {len(raw)} expected classes "
                            f"(e.g. {', '.join(list(raw)[:4])}, ...)")
        out[i] = index[key]
    return out
