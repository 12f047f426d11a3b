"""Loading and saving weights without pickle: safetensors files checked against their sha256."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import WeightsError


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checked(path: Path, expected_sha256: str | None, regenerate_hint: str = "") -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing it if its sha256 differs from the expected one."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} not found{'; ' + regenerate_hint if regenerate_hint else ''}")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise WeightsError(
                f"weights file {path} has sha256 {actual[:16]}..., expected {expected_sha256[:16]}...: the file is "
                f"corrupted or was replaced{'; ' + regenerate_hint if regenerate_hint else ''}"
            )
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise WeightsError(f"weights file {path} is not a readable safetensors file ({e})") from None


def save_atomic(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Save a state dict as safetensors via a temporary file + rename; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are meant to be read by everyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)
