"""Where forgetbench keeps derived data (generated images, reference features): one directory, safe to delete."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_write


def cache_dir(*parts: str) -> Path:
    """``$FORGETBENCH_CACHE`` or ``~/.cache/forgetbench``, plus sub-folders (created on demand)."""
    root = Path(os.environ.get("FORGETBENCH_CACHE") or Path.home() / ".cache" / "forgetbench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz atomically (a cache: no fsync), so readers never see half a file."""
    atomic_write(path, lambda f: np.savez(f, **arrays), durable=False)
