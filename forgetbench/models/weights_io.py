"""Loading and saving weights without pickle: safetensors files checked against their sha256."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ..atomic import atomic_write
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
    """Save a state dict as safetensors, atomically; returns the file's sha256."""
    path = atomic_write(path, save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata=metadata))
    return file_sha256(path)


#: Suffixes of PyTorch pickle checkpoints; they are read with ``torch.load(weights_only=True)`` only.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPERS = ("state_dict", "model", "module", "model_state_dict")  # common checkpoint layouts around a state dict


def torch_load_tensors(path: Path):
    """``torch.load(weights_only=True)`` of a PyTorch checkpoint: only tensors and plain containers are unpickled.

    A file that needs any other Python object (a payload, a model class) is refused with a WeightsError that names
    the object and, unlike torch's own message, never suggests ``weights_only=False``: nothing in the file runs.
    """
    import pickle
    import re

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needed = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the Python object {needed.group(1)}" if needed else "Python objects other than tensors"
        raise WeightsError(f"refused {path}: unpickling it needs {what}, and loading it could run code; nothing in it "
                           f"was run. Load the file where you trust it and save its tensors with safetensors "
                           f"(safetensors.torch.save_file(model.state_dict(), ...))") from None
    except Exception as e:  # truncated files, TorchScript archives, foreign formats
        raise WeightsError(f"weights file {path} is not a readable PyTorch state dict ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200] or 'empty or truncated'})") from None


def load_state_file(path: Path | str) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or from a PyTorch checkpoint holding nothing but tensors.

    Pickle checkpoints go through ``torch_load_tensors`` (``weights_only=True``): a file that needs any other Python
    object to unpickle is refused with a WeightsError, and nothing in it runs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        return load_checked(path, None)
    if path.suffix not in PICKLE_SUFFIXES:
        raise WeightsError(f"weights file {path} has an unknown type {path.suffix or '(no suffix)'!r}: expected "
                           f".safetensors (preferred) or a PyTorch state dict ({', '.join(PICKLE_SUFFIXES)})")
    return _unwrap_state(torch_load_tensors(path), path)


def _unwrap_state(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not state:
        raise WeightsError(f"weights file {path} holds no tensors (expected a state dict, possibly under "
                           f"{' / '.join(repr(k) for k in _WRAPPERS)})")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
