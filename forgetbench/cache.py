"""Where forgetbench keeps derived data (generated images, reference features): one directory, safe to delete."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir(*parts: str) -> Path:
    """``$FORGETBENCH_CACHE`` or ``~/.cache/forgetbench``, plus sub-folders (created on demand)."""
    root = Path(os.environ.get("FORGETBENCH_CACHE") or Path.home() / ".cache" / "forgetbench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz next to its final name and rename it into place, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
