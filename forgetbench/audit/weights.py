"""Tuned weights from anywhere, read without running anything: safetensors, or a PyTorch file read with
``torch.load(weights_only=True)`` (a pickle can never run code), holding the image encoder or a whole open_clip model
(keys under ``visual.``, ``module.`` or any other prefix)."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import WeightsError
from ..models.weights_io import torch_load_tensors


def _file_kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n < (100 << 20) and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    raise WeightsError(f"{path}: neither a safetensors file nor a PyTorch state dict file (it starts with "
                       f"{head[:8]!r}); save the weights with safetensors or torch.save(model.state_dict(), path)")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """(tensors, metadata, format) of a weights file, never executing anything in it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"tuned checkpoint {path} not found")
    kind = _file_kind(path)
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}), kind
        except Exception as e:  # safetensors has its own error types for damaged files
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    obj = torch_load_tensors(path)  # weights_only=True: a pickle that needs more than tensors is refused
    return _unwrap(obj, path), {}, kind


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: the object itself, or under a usual key (state_dict, model, ...)."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = [k for k in ("state_dict", "model_state_dict", "model", "module", "ema") if
                     isinstance(obj.get(k), Mapping)]
            if inner:
                obj = obj[inner[0]]
                continue
        break
    raise WeightsError(f"{path}: no state dict found (a mapping of names to tensors, possibly under 'state_dict' or "
                       f"'model'); got {type(obj).__name__}")


def select_visual(state: Mapping[str, torch.Tensor], reference: torch.nn.Module, source: str
                  ) -> tuple[dict[str, torch.Tensor], str, int]:
    """The image-encoder tensors of ``state`` renamed to ``reference``'s keys: (state, prefix found, tensors ignored).

    The prefix is whatever precedes the encoder's keys (``""``, ``visual.``, ``module.visual.``, ...); every key of
    the reference must be there with its shape, and nothing else under that prefix (a LoRA or adapter checkpoint must
    be merged first).
    """
    ref_state = reference.state_dict()
    names = sorted(ref_state)
    probe = max(names, key=len)  # the longest key pins the prefix down
    prefixes = sorted({k[: -len(probe)] for k in state if k.endswith(probe)}, key=len)
    for prefix in prefixes:
        if all(prefix + n in state for n in names):
            break
    else:
        missing = [n for n in names if n not in state][:5]
        raise WeightsError(f"{source}: not a state dict of this image encoder: keys such as "
                           f"{', '.join(missing)} are missing (looked for them with and without a prefix such as "
                           f"'visual.'; the file has e.g. {', '.join(sorted(state)[:3])})")
    stray = sorted(k for k in state if k.startswith(prefix) and k[len(prefix):] not in ref_state)
    if stray and prefix:
        raise WeightsError(f"{source}: unexpected tensors under {prefix!r}: {', '.join(stray[:5])}; this is not the "
                           f"reference's architecture (merge adapters such as LoRA into the weights first)")
    out = {}
    for n in names:
        t, want = state[prefix + n], ref_state[n]
        if tuple(t.shape) != tuple(want.shape):
            raise WeightsError(f"{source}: {prefix + n} has shape {tuple(t.shape)}, the reference's "
                               f"{n} has {tuple(want.shape)}: a different architecture")
        out[n] = t.to(want.dtype) if t.is_floating_point() and want.is_floating_point() else t
    return out, prefix, len(state) - len(names)
