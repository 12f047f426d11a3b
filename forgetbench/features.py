"""Feature extraction, with an on-disk cache for weights that never change (the frozen reference model).

The cache key is (weights hash, dataset fingerprint, split, preprocessing): a key without the model identity is a known
bug of wise-ft / ZSCL feature caches, and would silently reuse one model's features for another.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save
from tqdm import tqdm

from .progress import bar_disable

from .atomic import atomic_write
from .cache import cache_dir
from .data.base import ArraySplit, ImageDataset
from .models.base import Model, state_dict_hash

#: Extraction batch size. Fixed, so that features never depend on it (CPU matmuls are deterministic per shape).
EXTRACT_BATCH = 256
#: In-memory splits (the mini datasets) whose preprocessed images take at most this many bytes are preprocessed once
#: and kept as one tensor (in memory and in the cache): decoding and transforming every image on every pass cost about
#: a fifth of an evaluation. Larger splits (real datasets at 224 px) are preprocessed per pass, as before.
READY_MAX_BYTES = 256 * 2**20
#: Total size of the ready splits kept in memory; the oldest go first (they stay in the disk cache).
READY_KEEP_BYTES = 1024 * 2**20
_ready: dict[str, torch.Tensor] = {}  # ready_images' in-process copies, by cache key


class Preprocessed(torch.utils.data.Dataset):
    """A split whose images come out preprocessed for the model (what the loaders iterate)."""

    def __init__(self, split, preprocess):
        self.split, self.preprocess = split, preprocess

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        image, label = self.split[i]
        return self.preprocess(image), label


def loader(split, preprocess, batch_size: int, shuffle: bool = False, seed: int = 0, workers: int = 0,
           drop_last: bool = False, batch_sampler=None) -> torch.utils.data.DataLoader:
    """A DataLoader over a split with the model's preprocessing; shuffling is seeded; a batch sampler overrides it."""
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(Preprocessed(split, preprocess), batch_sampler=batch_sampler,
                                           num_workers=workers, pin_memory=torch.cuda.is_available())
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(
        Preprocessed(split, preprocess), batch_size=batch_size, shuffle=shuffle, generator=gen,
        num_workers=workers, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
    )


def ready_images(model: Model, dataset: ImageDataset, split: str) -> torch.Tensor | None:
    """The split's images preprocessed for ``model``, stacked [N, 3, H, W], when the split is held in memory and small
    enough (``READY_MAX_BYTES``); else None. Exactly what the loader's batches hold: the same transform, stacked."""
    images = dataset.split(split)
    if type(images) is not ArraySplit or len(images) == 0:
        return None
    key = cache_key("inputs", dataset, split, model.preprocess_id)
    if key in _ready:
        return _ready[key]
    first = model.preprocess(images[0][0])
    if first.numel() * first.element_size() * len(images) > READY_MAX_BYTES:
        return None
    path = cache_dir("inputs") / f"{key}.safetensors"
    try:
        x = torch.from_numpy(load_file(str(path))["images"]) if path.exists() else None
    except Exception:  # a damaged cache entry is recomputed, never trusted
        x = None
    if x is None or x.shape != (len(images), *first.shape):
        x = torch.stack([first] + [model.preprocess(images[i][0]) for i in range(1, len(images))])
        atomic_write(path, save({"images": x.numpy()}), durable=False)
    _ready[key] = x
    # keep every split a run evaluates (the mini world's are ~12 MB each), memory bounded all the same
    while sum(t.numel() * t.element_size() for t in _ready.values()) > READY_KEEP_BYTES and len(_ready) > 1:
        _ready.pop(next(iter(_ready)))
    return x


@torch.inference_mode()
def extract(visual: torch.nn.Module, model: Model, dataset: ImageDataset, split: str, device: str = "cpu",
            desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, D] (float32, unnormalised) and labels [N] of a split, in dataset order."""
    was_training = visual.training
    visual.eval()
    feats, labels = [], []
    ready = ready_images(model, dataset, split)
    if ready is not None:
        y = torch.from_numpy(dataset.labels(split))
        dl = [(ready[i:i + EXTRACT_BATCH], y[i:i + EXTRACT_BATCH]) for i in range(0, len(ready), EXTRACT_BATCH)]
    else:
        dl = loader(dataset.split(split), model.preprocess, EXTRACT_BATCH)
    # disable=None: progress bars on a terminal, none in logs and CI
    for x, y in tqdm(dl, desc=desc or f"features {dataset.name}:{split}", unit="batch", leave=False,
                     disable=bar_disable()):
        feats.append(visual(x.to(device)).float().cpu())
        labels.append(y)
    visual.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64)


def cache_key(weights_hash: str, dataset: ImageDataset, split: str, preprocess_id: str) -> str:
    raw = json.dumps([weights_hash, dataset.name, dataset.fingerprint, split, preprocess_id])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def cached_extract(visual: torch.nn.Module, model: Model, dataset: ImageDataset, split: str, device: str = "cpu",
                   weights_hash: str | None = None, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like ``extract`` but stored under the cache key; a second call with the same weights reads the file.

    A new entry is written only under the hash of the weights (buffers included) that computed it.
    """
    claimed, weights_hash = weights_hash, weights_hash or state_dict_hash(visual)
    path = (root or cache_dir("features")) / f"{cache_key(weights_hash, dataset, split, model.preprocess_id)}.safetensors"
    if path.exists():
        try:
            z = load_file(str(path))
            return z["features"], z["labels"]
        except Exception:  # a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    # a new entry only under the hash of the weights that compute it (a training-mode pass moves BatchNorm's statistics)
    if claimed is not None and state_dict_hash(visual) != claimed:
        raise RuntimeError(f"features of {dataset.name}:{split} would be cached under weights {weights_hash[:12]}..., "
                           f"but the encoder's weights or buffers changed since that hash was taken")
    feats, labels = extract(visual, model, dataset, split, device)
    atomic_write(path, save({"features": feats, "labels": labels}), durable=False)
    return feats, labels
