"""The real datasets: where each lives under the data root, its on-disk format, and how its parts are read.

torchvision's dataset classes read the formats they know (with ``download=True`` only when downloads are allowed);
the others are class-folder trees. Labels are taken without decoding any image and, wherever the format names its
classes, mapped by name onto the fixed class order of ``prompts.json``, so a zero-shot head built from the class
names always matches the labels.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import DataError
from .prompts import imagenet_subset, imagenet_wnids, prompts
from .idx import read_idx
from .splits import GreyArraySource, Part, class_folders, labels_by_name


@dataclass(frozen=True)
class RealDataset:
    name: str
    title: str
    folder: str  # relative to the data root: must exist (checked before anything is read)
    layout: str  # the on-disk layout, in words: printed when the folder is absent
    source: str  # where to get it
    parts: tuple[str, ...]  # official parts: ("train", "test"), ("train", "val", "test") or ("all",)
    read: Callable[[Path | None, str, bool], Part]  # (data root or None with a system folder, part, download)
    prompt_key: str = ""  # entry of prompts.json (default: name)
    downloadable: bool = False  # torchvision can fetch it
    system_folder: str = ""  # where a system package installs it: used when the data root has no copy (or none is set)


def existing_folder(spec: RealDataset, root: Path | None) -> Path | None:
    """The dataset's folder under the data root if it is there, else its system folder if that is there."""
    if root is not None and (root / spec.folder).exists():
        return root / spec.folder
    if spec.system_folder and Path(spec.system_folder).is_dir():
        return Path(spec.system_folder)
    return None


def _norm(s: str) -> str:
    return " ".join(s.replace("_", " ").replace("/", " ").lower().split())


def _check_count(found: int, name: str, where: Path) -> None:
    expected = len(prompts(name)["classes"])
    if found != expected:
        raise DataError(f"{where}: the format lists {found} classes, expected {expected} for {name}")


def _raw(name: str) -> list[str]:
    return prompts(name)["raw"]


# ---------------------------------------------------------------------------------------------- torchvision formats
def _tv(cls_name: str):
    import torchvision.datasets as tvd

    return getattr(tvd, cls_name)


def _cifar(cls_name: str, name: str):
    def read(root: Path, part: str, download: bool) -> Part:
        ds = _tv(cls_name)(str(root), train=part == "train", download=download)
        if [_norm(c) for c in ds.classes] != [_norm(c) for c in _raw(name)]:
            raise DataError(f"{root}: the class list of {name} differs from the expected one")
        return _whole(ds, ds.targets)
    return read


def _whole(ds, labels) -> Part:
    labels = np.asarray(labels, dtype=np.int64)
    return Part(ds, np.arange(len(labels)), labels)


def _svhn(root: Path, part: str, download: bool) -> Part:
    ds = _tv("SVHN")(str(root / "svhn"), split=part, download=download)
    return _whole(ds, ds.labels)


def _mnist(root: Path, part: str, download: bool) -> Part:
    ds = _tv("MNIST")(str(root), train=part == "train", download=download)
    return _whole(ds, ds.targets.numpy())


_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: {name} (or {name}.gz) not found")


def _fashion(root: Path | None, part: str, download: bool) -> Part:
    """IDX files, plain (torchvision's FashionMNIST/raw/) or gzipped (Debian's dataset-fashion-mnist)."""
    folder = existing_folder(by_name()["fashion-mnist"], root)
    if folder is None and download and root is not None:  # torchvision fetches and unpacks into FashionMNIST/raw
        _tv("FashionMNIST")(str(root), train=part == "train", download=True)
        folder = root / "FashionMNIST" / "raw"
    if folder is None:
        raise DataError("Fashion-MNIST not found")  # locate() said where it looked before any part is read
    images = read_idx(_idx_file(folder, _IDX[part][0]))
    labels = read_idx(_idx_file(folder, _IDX[part][1])).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: the {part} images {images.shape} and labels {labels.shape} do not match")
    if labels.size and labels.max() >= len(prompts("fashion-mnist")["classes"]):
        raise DataError(f"{folder}: {part} label {labels.max()} is out of range (Fashion-MNIST has 10 classes)")
    return Part(GreyArraySource(images), np.arange(len(labels)), labels)


def _dtd(root: Path, part: str, download: bool) -> Part:
    ds = _tv("DTD")(str(root), split=part, partition=1, download=download)
    return _whole(ds, labels_by_name([p.parent.name for p in ds._image_files], _raw("dtd"), root / "dtd"))


def _eurosat(root: Path, part: str, download: bool) -> Part:
    ds = _tv("EuroSAT")(str(root), download=download)
    names = [Path(p).parent.name for p, _ in ds.samples]
    return _whole(ds, labels_by_name(names, _raw("eurosat"), root / "eurosat"))


def _gtsrb(root: Path, part: str, download: bool) -> Part:
    ds = _tv("GTSRB")(str(root), split=part, download=download)
    # train labels come from the class folder names (00000..00042), test labels from GT-final_test.csv
    labels = [int(Path(p).parent.name) if part == "train" else t for p, t in ds._samples]
    if labels and max(labels) >= 43:
        raise DataError(f"{root / 'gtsrb'}: class id {max(labels)} is out of range (GTSRB has 43 classes)")
    return _whole(ds, labels)


def _cars(root: Path, part: str, download: bool) -> Part:
    ds = _tv("StanfordCars")(str(root), split=part, download=download)
    _check_count(len(ds.classes), "stanford-cars", root / "stanford_cars")
    return _whole(ds, [t for _, t in ds._samples])


def _flowers(root: Path, part: str, download: bool) -> Part:
    ds = _tv("Flowers102")(str(root), split=part, download=download)
    return _whole(ds, ds._labels)


def _pets(root: Path, part: str, download: bool) -> Part:
    ds = _tv("OxfordIIITPet")(str(root), split="trainval" if part == "train" else "test", download=download)
    # the label ids are the file's; check them against the breed in each image name (e.g. "great_pyrenees_12")
    by_name = labels_by_name([p.stem.rsplit("_", 1)[0] for p in ds._images], _raw("oxford-pets"),
                             root / "oxford-iiit-pet", _norm)
    if not np.array_equal(by_name, np.asarray(ds._labels)):
        raise DataError(f"{root / 'oxford-iiit-pet'}: the class ids of annotations/{part}.txt do not match the breed "
                        f"names of the images")
    return _whole(ds, ds._labels)


def _food(root: Path, part: str, download: bool) -> Part:
    ds = _tv("Food101")(str(root), split=part, download=download)
    return _whole(ds, labels_by_name([ds.classes[t] for t in ds._labels], _raw("food101"), root / "food-101", _norm))


def _aircraft(root: Path, part: str, download: bool) -> Part:
    ds = _tv("FGVCAircraft")(str(root), split=part, annotation_level="variant", download=download)
    _check_count(len(ds.classes), "fgvc-aircraft", root / "fgvc-aircraft-2013b")
    return _whole(ds, ds._labels)


def _caltech(root: Path, part: str, download: bool) -> Part:
    ds = _tv("Caltech101")(str(root), target_type="category", download=download)
    return _whole(ds, labels_by_name([ds.categories[y] for y in ds.y], _raw("caltech101"), root / "caltech101"))


def _sun(root: Path, part: str, download: bool) -> Part:
    ds = _tv("SUN397")(str(root), download=download)
    _check_count(len(ds.classes), "sun397", root / "SUN397")
    order = np.argsort([str(p) for p in ds._image_files], kind="stable")  # torchvision lists files unsorted
    return Part(ds, order, np.asarray(ds._labels, dtype=np.int64)[order])


def _stl(root: Path, part: str, download: bool) -> Part:
    ds = _tv("STL10")(str(root), split=part, download=download)
    return _whole(ds, ds.labels)


# ---------------------------------------------------------------------------------------------- class-folder trees
def _resisc(root: Path, part: str, download: bool) -> Part:
    return class_folders(root / "NWPU-RESISC45", _raw("resisc45"))


def _imagenet(root: Path, part: str, download: bool) -> Part:
    return class_folders(root / "imagenet" / ("train" if part == "train" else "val"), imagenet_wnids())


def _imagenet_subset(folder: str, subset: str):
    def read(root: Path, part: str, download: bool) -> Part:
        return class_folders(root / folder, imagenet_subset(subset)[0])
    return read


def _imagenet_v2(root: Path, part: str, download: bool) -> Part:
    def label_of(folder: str):
        return int(folder) if folder.isdigit() and int(folder) < 1000 else None
    return class_folders(root / "imagenetv2-matched-frequency-format-val", [str(i) for i in range(1000)], label_of)


def _office_home(domain: str):
    def read(root: Path, part: str, download: bool) -> Part:
        return class_folders(root / "OfficeHomeDataset_10072016" / domain, _raw("office-home"))
    return read


TV = "torchvision's layout"
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist installs the gzipped IDX files here
CATALOG: list[RealDataset] = [
    RealDataset("cifar10", "CIFAR-10", "cifar-10-batches-py", TV + ": data_batch_1..5, test_batch, batches.meta "
                "(the python version)", "https://www.cs.toronto.edu/~kriz/cifar.html", ("train", "test"),
                _cifar("CIFAR10", "cifar10"), downloadable=True),
    RealDataset("cifar100", "CIFAR-100", "cifar-100-python", TV + ": train, test, meta (the python version)",
                "https://www.cs.toronto.edu/~kriz/cifar.html", ("train", "test"), _cifar("CIFAR100", "cifar100"),
                downloadable=True),
    RealDataset("svhn", "SVHN (cropped digits)", "svhn", "train_32x32.mat and test_32x32.mat",
                "http://ufldl.stanford.edu/housenumbers/", ("train", "test"), _svhn, downloadable=True),
    RealDataset("mnist", "MNIST", "MNIST/raw", TV + ": train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte", "http://yann.lecun.com/exdb/mnist/",
                ("train", "test"), _mnist, downloadable=True),
    RealDataset("fashion-mnist", "Fashion-MNIST", "FashionMNIST/raw", TV + ": train-images-idx3-ubyte, "
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or .gz), or Debian's "
                "dataset-fashion-mnist in " + DEBIAN_FASHION_MNIST,
                "https://github.com/zalandoresearch/fashion-mnist (on Debian: apt-get install dataset-fashion-mnist)",
                ("train", "test"), _fashion, downloadable=True, system_folder=DEBIAN_FASHION_MNIST),
    RealDataset("dtd", "Describable Textures (partition 1)", "dtd/dtd", TV + ": images/<class>/*.jpg and "
                "labels/{train,val,test}1.txt", "https://www.robots.ox.ac.uk/~vgg/data/dtd/", ("train", "val", "test"),
                _dtd, downloadable=True),
    RealDataset("eurosat", "EuroSAT (RGB)", "eurosat/2750", "<class>/*.jpg for the 10 classes (AnnualCrop, ...)",
                "https://github.com/phelber/EuroSAT", ("all",), _eurosat, downloadable=True),
    RealDataset("gtsrb", "GTSRB", "gtsrb", TV + ": GTSRB/Training/<00000..00042>/*.ppm, "
                "GTSRB/Final_Test/Images/*.ppm and GT-final_test.csv", "https://benchmark.ini.rub.de/gtsrb_dataset.html",
                ("train", "test"), _gtsrb, downloadable=True),
    RealDataset("resisc45", "NWPU-RESISC45", "NWPU-RESISC45", "<class>/*.jpg for the 45 classes (airplane, airport, ...)",
                "https://gcheng-nwpu.github.io/ (NWPU-RESISC45)", ("all",), _resisc),
    RealDataset("stanford-cars", "Stanford Cars", "stanford_cars", TV + ": cars_train/, cars_test/, "
                "devkit/{cars_meta,cars_train_annos}.mat, cars_test_annos_withlabels.mat",
                "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (mirrors exist)", ("train", "test"), _cars),
    RealDataset("flowers102", "Oxford Flowers-102", "flowers-102", TV + ": jpg/, imagelabels.mat, setid.mat",
                "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", ("train", "val", "test"), _flowers,
                downloadable=True),
    RealDataset("oxford-pets", "Oxford-IIIT Pets", "oxford-iiit-pet", TV + ": images/*.jpg, "
                "annotations/{trainval,test}.txt", "https://www.robots.ox.ac.uk/~vgg/data/pets/", ("train", "test"),
                _pets, downloadable=True),
    RealDataset("food101", "Food-101", "food-101", TV + ": images/<class>/*.jpg, meta/{train,test}.json",
                "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/", ("train", "test"), _food,
                downloadable=True),
    RealDataset("fgvc-aircraft", "FGVC-Aircraft (variants)", "fgvc-aircraft-2013b", TV + ": data/images/*.jpg, "
                "data/variants.txt, data/images_variant_{train,val,test}.txt",
                "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/", ("train", "val", "test"), _aircraft,
                downloadable=True),
    RealDataset("caltech101", "Caltech-101", "caltech101/101_ObjectCategories", TV + ": <category>/image_*.jpg "
                "(BACKGROUND_Google is left out)", "https://data.caltech.edu/records/mzrjq-6wc02", ("all",), _caltech,
                downloadable=True),
    RealDataset("sun397", "SUN397", "SUN397", TV + ": ClassName.txt and <letter>/<class>/sun_*.jpg",
                "https://vision.princeton.edu/projects/2010/SUN/", ("all",), _sun, downloadable=True),
    RealDataset("stl10", "STL-10", "stl10_binary", TV + ": train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
                "class_names.txt", "https://cs.stanford.edu/~acoates/stl10/", ("train", "test"), _stl, downloadable=True),
    RealDataset("imagenet", "ImageNet-1k (ILSVRC-2012)", "imagenet", "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
                "(the validation images sorted into class folders; its val is forgetbench's test)",
                "https://image-net.org/", ("train", "test"), _imagenet, prompt_key="imagenet"),
    RealDataset("imagenet-v2", "ImageNet-V2 (matched frequency)", "imagenetv2-matched-frequency-format-val",
                "<class index 0..999>/*.jpeg", "https://github.com/modestyachts/ImageNetV2", ("all",), _imagenet_v2,
                prompt_key="imagenet"),
    RealDataset("imagenet-r", "ImageNet-R (200 classes)", "imagenet-r", "<wnid>/*.jpg for its 200 classes",
                "https://github.com/hendrycks/imagenet-r", ("all",), _imagenet_subset("imagenet-r", "r"),
                prompt_key="imagenet-r"),
    RealDataset("imagenet-a", "ImageNet-A (200 classes)", "imagenet-a", "<wnid>/*.jpg for its 200 classes",
                "https://github.com/hendrycks/natural-adv-examples", ("all",), _imagenet_subset("imagenet-a", "a"),
                prompt_key="imagenet-a"),
    RealDataset("imagenet-sketch", "ImageNet-Sketch", "imagenet-sketch/sketch", "<wnid>/*.JPEG for the 1000 classes",
                "https://github.com/HaohanWang/ImageNet-Sketch", ("all",),
                _imagenet_subset("imagenet-sketch/sketch", "all"), prompt_key="imagenet"),
] + [
    RealDataset(f"office-home/{slug}", f"Office-Home ({domain})", f"OfficeHomeDataset_10072016/{domain}",
                "<class>/*.jpg for the 65 classes (Alarm_Clock, ...)", "https://www.hemanthdv.org/officeHomeDataset.html",
                ("all",), _office_home(domain), prompt_key="office-home")
    for slug, domain in (("art", "Art"), ("clipart", "Clipart"), ("product", "Product"), ("real-world", "Real World"))
]


@lru_cache(maxsize=None)
def by_name() -> dict[str, RealDataset]:
    return {d.name: d for d in CATALOG}
