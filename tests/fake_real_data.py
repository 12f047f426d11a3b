"""Tiny fake copies of the real datasets, in their real on-disk formats (files, folders, .mat, pickles, idx, csv).

Every image is a flat colour that encodes its intended label (``encode`` / ``decode``), so a test can check that the
label a split hands out is the one the format assigns to that image. ``FAKES[name](root)`` writes one dataset under
``root`` and returns the number of images of each official part.
"""
from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from forgetbench.data.real.prompts import imagenet_subset, prompts

SIZE = 8  # pixels; the formats do not care, the preprocessing resizes


def encode(label: int) -> tuple[int, int, int]:
    """A colour for a label < 1024 that survives JPEG: 32 levels per channel, 8 apart."""
    return (label % 32) * 8 + 4, (label // 32) * 8 + 4, 128


def decode(image: Image.Image) -> int:
    r, g, b = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
    if abs(r - g) < 1 and abs(g - b) < 1:  # a grey image (MNIST) carries the red channel only
        return int(round((r - 4) / 8))
    return int(round((r - 4) / 8)) + 32 * int(round((g - 4) / 8))


def _pixels(label: int, size: int = SIZE) -> np.ndarray:
    return np.tile(np.array(encode(label), dtype=np.uint8), (size, size, 1))


def _save(path: Path, label: int, size: int = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(label, size)).save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") \
        else Image.fromarray(_pixels(label, size)).save(path)


def _labels(n: int, n_classes: int, offset: int = 0) -> list[int]:
    """n labels spread over the class range (first, last and a few between), so both ends of the order are hit."""
    return [(offset + i * 7) % n_classes if i > 1 else (0 if i == 0 else n_classes - 1) for i in range(n)]


# ---------------------------------------------------------------------------------------------- torchvision formats
def cifar(root: Path, which: int = 10) -> dict:
    folder = root / ("cifar-10-batches-py" if which == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    raw = prompts(f"cifar{which}")["raw"]
    key = "labels" if which == 10 else "fine_labels"
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]} if which == 10 \
        else {"train": ["train"], "test": ["test"]}
    counts = {}
    for part, names in files.items():
        counts[part] = 0
        for j, name in enumerate(names):
            labels = _labels(4 if which == 10 else 12, len(raw), offset=j)
            data = np.stack([np.transpose(_pixels(y, 32), (2, 0, 1)).reshape(-1) for y in labels])
            with open(folder / name, "wb") as f:
                pickle.dump({"data": data, key: labels}, f)
            counts[part] += len(labels)
    meta = ("batches.meta", "label_names") if which == 10 else ("meta", "fine_label_names")
    with open(folder / meta[0], "wb") as f:
        pickle.dump({meta[1]: list(raw)}, f)
    return counts


def svhn(root: Path) -> dict:
    counts = {}
    for part, n in (("train", 12), ("test", 6)):
        labels = _labels(n, 10)
        x = np.stack([_pixels(y, 32) for y in labels], axis=-1)  # H, W, C, N
        y = np.array([[10 if v == 0 else v] for v in labels], dtype=np.uint8)  # SVHN stores the digit 0 as 10
        (root / "svhn").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "svhn" / f"{part}_32x32.mat", {"X": x, "y": y})
        counts[part] = n
    return counts


def mnist(root: Path, folder: str = "MNIST/raw", gzipped: bool = False) -> dict:
    """MNIST's IDX files (also Fashion-MNIST's: the same format; Debian ships them gzipped)."""
    raw = root / folder
    raw.mkdir(parents=True)
    counts = {}
    for part, prefix, n in (("train", "train", 12), ("test", "t10k", 6)):
        labels = _labels(n, 10)
        images = np.stack([_pixels(y, 28)[..., 0] for y in labels])  # grey: the red channel carries the label
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">ii", 2049, n) + bytes(labels)}
        for name, data in files.items():
            if gzipped:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
        counts[part] = n
    return counts


def dtd(root: Path) -> dict:
    base = root / "dtd" / "dtd"
    raw = prompts("dtd")["raw"]
    counts = {}
    for part, offset in (("train", 0), ("val", 3), ("test", 5)):
        lines = []
        for i, y in enumerate(_labels(5, len(raw), offset)):
            name = f"{raw[y]}/{raw[y]}_{part}{i:04d}.jpg"
            _save(base / "images" / name, y)
            lines.append(name)
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{part}1.txt").write_text("\n".join(lines) + "\n")
        counts[part] = len(lines)
    return counts


def eurosat(root: Path) -> dict:
    raw = prompts("eurosat")["raw"]
    labels = _labels(20, len(raw))
    for i, y in enumerate(labels):
        _save(root / "eurosat" / "2750" / raw[y] / f"{raw[y]}_{i}.jpg", y)
    return {"all": len(labels)}


def gtsrb(root: Path) -> dict:
    base = root / "gtsrb"
    train = _labels(12, 43)
    for i, y in enumerate(train):
        _save(base / "GTSRB" / "Training" / f"{y:05d}" / f"{i:05d}_00000.ppm", y)
    test = _labels(6, 43, offset=2)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, y in enumerate(test):
        _save(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", y)
        rows.append(f"{i:05d}.ppm;{SIZE};{SIZE};0;0;{SIZE};{SIZE};{y}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return {"train": len(train), "test": len(test)}


def resisc45(root: Path) -> dict:
    raw = prompts("resisc45")["raw"]
    labels = _labels(20, len(raw))
    for i, y in enumerate(labels):
        _save(root / "NWPU-RESISC45" / raw[y] / f"{raw[y]}_{i:03d}.jpg", y)
    return {"all": len(labels)}


def _mat_struct(rows: list[dict]) -> np.ndarray:
    dtype = [(k, "O") for k in rows[0]]
    return np.array([tuple(r[k] for k, _ in dtype) for r in rows], dtype=dtype)


def stanford_cars(root: Path) -> dict:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = prompts("stanford-cars")["classes"]
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object)[None, :]})
    counts = {}
    for part, n, annos in (("train", 12, base / "devkit" / "cars_train_annos.mat"),
                           ("test", 6, base / "cars_test_annos_withlabels.mat")):
        rows = []
        for i, y in enumerate(_labels(n, len(names))):
            fname = f"{i + 1:05d}.jpg"
            _save(base / f"cars_{part}" / fname, y)
            rows.append({"bbox_x1": 0, "bbox_y1": 0, "bbox_x2": SIZE, "bbox_y2": SIZE, "class": y + 1, "fname": fname})
        scipy.io.savemat(annos, {"annotations": _mat_struct(rows)})
        counts[part] = n
    return counts


def flowers102(root: Path) -> dict:
    base = root / "flowers-102"
    labels = _labels(15, 102)
    for i, y in enumerate(labels):
        _save(base / "jpg" / f"image_{i + 1:05d}.jpg", y)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([[y + 1 for y in labels]])})
    ids = np.arange(1, 16)
    scipy.io.savemat(base / "setid.mat", {"trnid": ids[None, :6], "valid": ids[None, 6:10], "tstid": ids[None, 10:]})
    return {"train": 6, "val": 4, "test": 5}


def oxford_pets(root: Path) -> dict:
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    classes = prompts("oxford-pets")["classes"]
    counts = {}
    for part, file, offset in (("train", "trainval", 0), ("test", "test", 4)):
        lines = []
        for i, y in enumerate(_labels(12, len(classes), offset)):
            stem = f"{classes[y].replace(' ', '_')}_{part}{i}"  # cats are capitalised, dogs not, as in the real files
            _save(base / "images" / f"{stem}.jpg", y)
            lines.append(f"{stem} {y + 1} {1 if stem[0].isupper() else 2} 1")
        (base / "annotations" / f"{file}.txt").write_text("\n".join(lines) + "\n")
        counts[part] = len(lines)
    return counts


def food101(root: Path) -> dict:
    base = root / "food-101"
    raw = prompts("food101")["raw"]
    counts = {}
    for part, offset in (("train", 0), ("test", 2)):
        meta: dict[str, list[str]] = {}
        labels = _labels(10, len(raw), offset)
        for i, y in enumerate(labels):
            rel = f"{raw[y]}/{part}{i}"
            _save(base / "images" / f"{rel}.jpg", y)
            meta.setdefault(raw[y], []).append(rel)
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{part}.json").write_text(json.dumps(meta))
        counts[part] = len(labels)
    return counts


def fgvc_aircraft(root: Path) -> dict:
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = prompts("fgvc-aircraft")["classes"]
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(classes) + "\n")
    counts = {}
    for part, offset in (("train", 0), ("val", 1), ("test", 2)):
        lines = []
        for i, y in enumerate(_labels(5, len(classes), offset)):
            name = f"{part}{i:04d}"
            _save(data / "images" / f"{name}.jpg", y)
            lines.append(f"{name} {classes[y]}")
        (data / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
        counts[part] = len(lines)
    return counts


def caltech101(root: Path) -> dict:
    base = root / "caltech101" / "101_ObjectCategories"
    raw = prompts("caltech101")["raw"]
    _save(base / "BACKGROUND_Google" / "image_0001.jpg", 0)  # torchvision drops this folder
    per_class: dict[int, int] = {}
    labels = _labels(20, len(raw))
    for y in labels:
        per_class[y] = per_class.get(y, 0) + 1
        _save(base / raw[y] / f"image_{per_class[y]:04d}.jpg", y)
    return {"all": len(labels)}


def sun397(root: Path) -> dict:
    base = root / "SUN397"
    names = [f"/{c[0]}/{c.replace(' ', '_')}" for c in prompts("sun397")["classes"]]
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("\n".join(names) + "\n")
    labels = _labels(20, len(names))
    for i, y in enumerate(labels):
        _save(base / names[y][1:] / f"sun_{i:04d}.jpg", y)
    return {"all": len(labels)}


def stl10(root: Path) -> dict:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    (base / "class_names.txt").write_text("\n".join(prompts("stl10")["classes"]) + "\n")
    counts = {}
    for part, n in (("train", 12), ("test", 6)):
        labels = _labels(n, 10)
        x = np.stack([np.transpose(_pixels(y, 96), (2, 1, 0)) for y in labels])  # N, C, W, H: column-major
        (base / f"{part}_X.bin").write_bytes(x.tobytes())
        (base / f"{part}_y.bin").write_bytes(bytes(y + 1 for y in labels))
        counts[part] = n
    return counts


# ---------------------------------------------------------------------------------------------- class-folder trees
def imagenet(root: Path) -> dict:
    wnids = imagenet_subset("all")[0]
    counts = {}
    for part, folder, n, offset in (("train", "train", 12, 0), ("test", "val", 6, 3)):
        for i, y in enumerate(_labels(n, 1000, offset)):
            _save(root / "imagenet" / folder / wnids[y] / f"{wnids[y]}_{i}.JPEG", y)
        counts[part] = n
    return counts


def imagenet_v2(root: Path) -> dict:
    labels = _labels(20, 1000, 11)
    for i, y in enumerate(labels):
        _save(root / "imagenetv2-matched-frequency-format-val" / str(y) / f"{i}.jpeg", y)
    return {"all": len(labels)}


def _imagenet_subset(folder: str, which: str):
    def make(root: Path) -> dict:
        wnids = imagenet_subset(which)[0]
        labels = _labels(20, len(wnids))
        for i, y in enumerate(labels):
            _save(root / folder / wnids[y] / f"{i}.jpg", y)
        return {"all": len(labels)}
    return make


def _office_home(domain: str):
    def make(root: Path) -> dict:
        raw = prompts("office-home")["raw"]
        labels = _labels(20, len(raw), len(domain))
        for i, y in enumerate(labels):
            _save(root / "OfficeHomeDataset_10072016" / domain / raw[y] / f"{i:05d}.jpg", y)
        return {"all": len(labels)}
    return make


FAKES = {
    "cifar10": lambda r: cifar(r, 10), "cifar100": lambda r: cifar(r, 100), "svhn": svhn, "mnist": mnist,
    "fashion-mnist": lambda r: mnist(r, "FashionMNIST/raw"),
    "dtd": dtd, "eurosat": eurosat, "gtsrb": gtsrb, "resisc45": resisc45, "stanford-cars": stanford_cars,
    "flowers102": flowers102, "oxford-pets": oxford_pets, "food101": food101, "fgvc-aircraft": fgvc_aircraft,
    "caltech101": caltech101, "sun397": sun397, "stl10": stl10, "imagenet": imagenet, "imagenet-v2": imagenet_v2,
    "imagenet-r": _imagenet_subset("imagenet-r", "r"), "imagenet-a": _imagenet_subset("imagenet-a", "a"),
    "imagenet-sketch": _imagenet_subset("imagenet-sketch/sketch", "all"),
    "office-home/art": _office_home("Art"), "office-home/clipart": _office_home("Clipart"),
    "office-home/product": _office_home("Product"), "office-home/real-world": _office_home("Real World"),
}
