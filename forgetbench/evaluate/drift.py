"""Drift of features and weights between a reference model and its fine-tuned version.

All feature drifts compare the SAME samples seen by both models: row i of ``f_ref`` and row i of ``f_ft`` must be
the features of the same input. Inputs may be numpy arrays or torch tensors (any device, any float dtype); every
computation runs in float64 on the CPU and the result is a Python float.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..errors import DataError, SpecError

_F64 = torch.float64


def as_feature_matrix(x: Any, name: str) -> torch.Tensor:
    """``x`` as a float64 CPU tensor of shape (n_samples, dim), or a DataError saying what was wrong with it."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device="cpu", dtype=_F64)
    else:
        try:
            t = torch.tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise DataError(f"{name}: expected a numeric array of shape (n_samples, dim), "
                            f"got {type(x).__name__} ({e})") from None
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name}: expected a 2-D array of shape (n_samples, dim) with both sizes > 0, "
                        f"got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{name}: contains NaN or infinite values; features must be finite")
    return t


def _paired(f_ref: Any, f_ft: Any, same_dim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_feature_matrix(f_ref, "f_ref"), as_feature_matrix(f_ft, "f_ft")
    if a.shape[0] != b.shape[0] or (same_dim and a.shape[1] != b.shape[1]):
        want = "the same shape" if same_dim else "the same number of rows"
        raise DataError(f"f_ref {tuple(a.shape)} and f_ft {tuple(b.shape)} must have {want}: "
                        "row i of both must be the features of the same sample")
    return a, b


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low


def check_subsample_args(max_samples: int | None, seed: int) -> None:
    """SpecError unless ``max_samples`` is None or an integer >= 2 and ``seed`` an integer >= 0."""
    if max_samples is not None and not _is_int(max_samples, 2):
        raise SpecError(f"max_samples must be an integer >= 2 or None, got {max_samples!r}")
    if not _is_int(seed, 0):
        raise SpecError(f"seed must be an integer >= 0, got {seed!r}")


def paired_subsample(n: int, max_samples: int | None, seed: int) -> torch.Tensor | None:
    """Sorted row indices of a seeded subsample of size ``max_samples`` (None when no subsampling is needed):
    ``np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))``.

    Both sides of a paired comparison must be indexed with the SAME indices: independent subsamples of identical
    data give a nonzero distance (the microsoft/otdd issue #32 bug).
    """
    check_subsample_args(max_samples, seed)
    if max_samples is None or max_samples >= n:
        return None
    idx = np.sort(np.random.default_rng(seed).choice(n, size=int(max_samples), replace=False))
    return torch.from_numpy(idx)


def l2_drift(f_ref: Any, f_ft: Any) -> float:
    """Mean over samples of ||f_ft/|f_ft| - f_ref/|f_ref|||^2 (row-aligned features; value in [0, 4]).

    A zero feature vector stays zero after normalisation (no division by zero).
    """
    a, b = _paired(f_ref, f_ft, same_dim=True)
    a = torch.nn.functional.normalize(a, dim=1)
    b = torch.nn.functional.normalize(b, dim=1)
    return float((b - a).pow(2).sum(1).mean())


def _centred_unit_rows(f: torch.Tensor) -> torch.Tensor:
    f = f - f.mean(0, keepdim=True)
    return torch.nn.functional.normalize(f, dim=1)


def kernel_drift(f_ref: Any, f_ft: Any, *, max_samples: int | None = None, seed: int = 0,
                 chunk: int = 1024) -> float:
    """AFT's kernel regulariser used as a drift metric (unit feature weights; metrics.md section 5).

    Centre each feature dimension over the samples, L2-normalise each row, take linear kernels K = F F^T (n x n) for
    both models and return sqrt(mean_ij (K_ft - K_ref)_ij^2). AFT adds 1e-8 under the square root to keep its gradient
    finite; this metric drops it so identical inputs give exactly 0. The two feature sets may differ in dimension.
    Invariant to rotations (and scalings) of either feature space, unlike ``l2_drift``.

    ``max_samples`` evaluates on a seeded subsample (the same rows on both sides); the kernels are built in row
    blocks of ``chunk`` so memory stays O(chunk * n).
    """
    if not _is_int(chunk, 1):
        raise SpecError(f"chunk must be an integer >= 1, got {chunk!r}")
    a, b = _paired(f_ref, f_ft, same_dim=False)
    idx = paired_subsample(a.shape[0], max_samples, seed)
    if idx is not None:
        a, b = a[idx], b[idx]
    a, b = _centred_unit_rows(a), _centred_unit_rows(b)
    n = a.shape[0]
    total = torch.zeros((), dtype=_F64)
    for start in range(0, n, chunk):
        diff = b[start:start + chunk] @ b.T - a[start:start + chunk] @ a.T
        total += diff.pow(2).sum()
    return float(torch.sqrt(total / (n * n)))


def _float_tensor(v: Any) -> torch.Tensor | None:
    t = v if isinstance(v, torch.Tensor) else (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else None)
    if t is None or not t.is_floating_point():
        return None
    return t.detach().to(device="cpu", dtype=_F64)


def weight_drift(state_ref: Mapping[str, Any], state_ft: Mapping[str, Any],
                 keys: Iterable[str] | None = None) -> float:
    """Relative L2 distance ||w_ft - w_ref|| / ||w_ref|| over all floating-point tensors of matching keys.

    The norm is taken over the concatenation of the selected tensors (state dicts of tensors or numpy arrays).
    ``keys=None`` uses every key present in both dicts whose values are floating point in both (integer buffers
    such as BatchNorm's ``num_batches_tracked`` are skipped); explicit ``keys`` must all exist and be floating.
    """
    if keys is None:
        names = [k for k in state_ref if k in state_ft
                 and _float_tensor(state_ref[k]) is not None and _float_tensor(state_ft[k]) is not None]
        if not names:
            raise DataError("weight_drift: the two state dicts share no floating-point tensor under the same key "
                            f"(reference has {len(state_ref)} keys, fine-tuned has {len(state_ft)})")
    else:
        names = [keys] if isinstance(keys, str) else list(keys)
        missing = [k for k in names if k not in state_ref or k not in state_ft]
        if missing:
            raise DataError(f"weight_drift: keys missing from a state dict: {missing[:5]}"
                            f"{' ...' if len(missing) > 5 else ''}")
        if not names:
            raise SpecError("weight_drift: keys is empty; pass None to use every shared floating tensor")
    diff2 = ref2 = 0.0
    for k in names:
        r, f = _float_tensor(state_ref[k]), _float_tensor(state_ft[k])
        if r is None or f is None:
            raise DataError(f"weight_drift: {k!r} is not a floating-point tensor in both state dicts")
        if r.shape != f.shape:
            raise DataError(f"weight_drift: {k!r} has shape {tuple(r.shape)} in the reference but "
                            f"{tuple(f.shape)} in the fine-tuned state dict")
        diff2 += float((f - r).pow(2).sum())
        ref2 += float(r.pow(2).sum())
    if not np.isfinite(diff2 + ref2):
        raise DataError("weight_drift: a selected tensor contains NaN or infinite values")
    if ref2 == 0.0:
        raise DataError("weight_drift: the reference weights are all zero, so the relative drift is undefined")
    return float(np.sqrt(diff2 / ref2))


def encoder_weight_drift(reference, tuned) -> float:
    """``weight_drift`` of two encoders over their parameters: buffers such as BatchNorm's running statistics are not
    weights, and their size (a running variance can be in the hundreds) would swamp the relative change."""
    names = [n for n, p in reference.named_parameters() if p.is_floating_point()]
    return weight_drift(reference.state_dict(), tuned.state_dict(), keys=names)
