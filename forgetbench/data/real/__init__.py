"""Real datasets from disk (CIFAR, DTD, EuroSAT, ..., ImageNet and its variants, Office-Home), registered lazily.

Registration reads nothing; ``get_dataset(name)`` finds the dataset under the data root (``root.py``) or fails with one
line naming the expected folder and layout; images are read only when a split is iterated.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ...errors import DataError
from ..base import DATASETS, ImageDataset
from .catalog import CATALOG, RealDataset, by_name, existing_folder
from .prompts import prompts
from .root import data_root, data_root_or_none, downloads_allowed, set_data_root, set_download
from .splits import RULE_ID, SplitView, split_part

#: Bump when a reader changes which images or labels a split holds: it is part of every fingerprint.
READER_VERSION = 1

__all__ = ["CATALOG", "build", "by_name", "class_info", "data_root", "download", "locate", "set_data_root", "set_download",
           "status"]


def locate(spec: RealDataset, root: Path | None = None) -> Path:
    """The dataset's folder; a DataError naming the expected path and layout when it is absent.

    A dataset with a system folder (installed by a system package) is found there when the data root has no copy of
    it, or when no data root is set.
    """
    root = root or (data_root_or_none() if spec.system_folder else data_root())
    found = existing_folder(spec, root)
    if found is not None:
        return found
    how = f"get it from {spec.source}"
    if spec.downloadable:
        how += f", or let torchvision fetch it: `forgetbench download {spec.name}` (or --download)"
    if root is None:
        raise DataError(f"dataset {spec.name!r} not found: {spec.system_folder} is absent and no data root is set "
                        f"(--data-root, FORGETBENCH_DATA); {how}")
    folder = root / spec.folder
    if spec.downloadable and downloads_allowed():
        return folder
    also = f" or {spec.system_folder}" if spec.system_folder else ""
    raise DataError(f"dataset {spec.name!r} not found: expected {folder}{also} ({spec.layout}); {how}")


def _read_part(spec: RealDataset, root: Path, part: str):
    try:
        return spec.read(root, part, downloads_allowed())
    except DataError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError, IndexError) as e:  # torchvision's "not found or corrupted"
        where = root / spec.folder if root is not None else spec.system_folder
        raise DataError(f"dataset {spec.name!r}: cannot read the {part} part under {where} "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); expected {spec.layout}") from None


def _signature(folder: Path) -> str:
    """Location, size and modification time of the folder and its entries: changes when files are replaced."""
    h = hashlib.sha256(str(folder.resolve()).encode())
    for p in [folder, *sorted(folder.iterdir())] if folder.is_dir() else [folder]:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def build(name: str) -> ImageDataset:
    spec = by_name()[name]
    root = data_root_or_none() if spec.system_folder else data_root()
    folder = locate(spec, root)
    parts: dict = {}

    def part(p: str):
        if p not in parts:
            parts[p] = _read_part(spec, root, p)
        return parts[p]

    if not folder.exists():  # downloads are allowed: fetch now, so the fingerprint sees the files
        for p in spec.parts:
            part(p)
    table = prompts(spec.prompt_key or spec.name)
    return ImageDataset(
        name=spec.name, classnames=list(table["classes"]), templates=list(table["templates"]),
        split_builders={s: (lambda s=s: SplitView(split_part(spec.parts, part, s))) for s in ("train", "val", "test")},
        fingerprint=f"{spec.name}:real-v{READER_VERSION}:{RULE_ID}:{_signature(folder)}",
        description=f"{spec.title} from {folder}",
    )


def class_info(name: str) -> tuple[list[str], list[str]]:
    """(class names, templates) of a real dataset, without touching the disk (dry runs, listings)."""
    table = prompts(by_name()[name].prompt_key or name)
    return list(table["classes"]), list(table["templates"])


def status(name: str) -> str:
    """"found at PATH", or the one-line reason it is not usable here (no data root, absent)."""
    root = data_root_or_none()
    if root is None and not by_name()[name].system_folder:
        return "no data root set"
    try:
        return f"found at {locate(by_name()[name], root)}"
    except DataError as e:
        return f"not available here: {e}"


def download(name: str) -> Path:
    """Let torchvision fetch a dataset into the data root (only those it can fetch)."""
    if name not in by_name():
        DATASETS.get(name)  # an unknown name fails here, with suggestions
        raise DataError(f"{name!r} is not a dataset forgetbench reads from disk (nothing to download)")
    spec = by_name()[name]
    if not spec.downloadable:
        raise DataError(f"dataset {name!r} cannot be downloaded automatically; get it from {spec.source} and put it "
                        f"at {data_root() / spec.folder} ({spec.layout})")
    root = data_root()
    root.mkdir(parents=True, exist_ok=True)
    set_download(True)
    try:
        for p in spec.parts:
            _read_part(spec, root, p)
    finally:
        set_download(None)
    return root / spec.folder


for _spec in CATALOG:
    DATASETS.register(_spec.name, lambda n=_spec.name: build(n))
