"""Continual fine-tuning metrics from the accuracy matrix of a task sequence.

``R`` is T x T: ``R[t, j]`` is the accuracy (percent) on step j's dataset after training through step t (0-based
here; the papers count from 1). ``reference[j]`` is the accuracy of the model before any step (b_j).

- MTIL (Zheng et al., ICCV 2023, ``mtil/results.ipynb``): Transfer = mean over j >= 1 of mean_{t < j} R[t, j] (the
  accuracy on a dataset before it is learned); Avg = mean of every entry; Last = mean of the last row.
- Average accuracy A_T = mean of the last row (the same number as Last, named as in the CL literature); average
  incremental accuracy = mean_t mean_{j <= t} R[t, j].
- BWT (Lopez-Paz & Ranzato 2017) = mean_{j < T-1} (R[T-1, j] - R[j, j]).
- FWT = mean_{j >= 1} (R[j-1, j] - b_j), with b_j the accuracy of the model before the sequence.
- Forgetting (Chaudhry et al. 2018) = mean_{j < T-1} (max_{j <= l < T-1} R[l, j] - R[T-1, j]). Not clamped at 0:
  mammoth's ``forgetting`` also takes the last row into the max, which gives max(f_j, 0) per dataset.

Metrics that need two steps (Transfer, BWT, FWT, forgetting) are left out of a one-step sequence.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import SpecError


def _matrix(R: Any) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise SpecError(f"accuracy matrix R must be square T x T with T >= 1, got shape {R.shape}")
    if not np.isfinite(R).all():
        raise SpecError("accuracy matrix R has a NaN or infinite entry")
    return R


def _mean(xs) -> float:
    return math.fsum(float(x) for x in xs) / len(xs)  # exact sum: no dependence on the order of terms


def mtil_per_dataset(R: Any) -> dict[str, list[float]]:
    """The MTIL notebook's per-dataset vectors: ``transfer`` (datasets 1..T-1), ``avg`` and ``last`` (all T)."""
    R = _matrix(R)
    T = len(R)
    return {"transfer": [_mean(R[:j, j]) for j in range(1, T)],
            "avg": [_mean(R[:, j]) for j in range(T)],
            "last": [float(x) for x in R[-1]]}


def backward_transfer(R: Any) -> float:
    R = _matrix(R)
    return _mean([R[-1, j] - R[j, j] for j in range(len(R) - 1)])


def forward_transfer(R: Any, reference: Sequence[float]) -> float:
    R = _matrix(R)
    b = np.asarray(reference, dtype=np.float64)
    if b.shape != (len(R),):
        raise SpecError(f"reference accuracies must have one entry per step ({len(R)}), got shape {b.shape}")
    return _mean([R[j - 1, j] - b[j] for j in range(1, len(R))])


def forgetting(R: Any) -> float:
    R = _matrix(R)
    T = len(R)
    return _mean([R[j:T - 1, j].max() - R[-1, j] for j in range(T - 1)])


def sequence_metrics(R: Any, reference: Sequence[float] | None = None) -> dict[str, float]:
    """Every sequence metric of ``R`` (FWT only when the reference accuracies b_j are given)."""
    R = _matrix(R)
    T = len(R)
    out = {"avg": _mean(R.ravel()), "last": _mean(R[-1]), "average_accuracy": _mean(R[-1]),
           "average_incremental_accuracy": _mean([_mean(R[t, :t + 1]) for t in range(T)])}
    if T >= 2:
        out["transfer"] = _mean(mtil_per_dataset(R)["transfer"])
        out["bwt"] = backward_transfer(R)
        out["forgetting"] = forgetting(R)
        if reference is not None:
            out["fwt"] = forward_transfer(R, reference)
    return out


def heldout_metrics(H: Any, reference: Sequence[float]) -> dict[str, float]:
    """Datasets never trained on: accuracy after the last step (mean) and its change from the reference model."""
    H = np.asarray(H, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if H.ndim != 2 or H.shape[1] != b.shape[0] or not H.size:
        return {}
    delta = H[-1] - b
    return {"heldout_last": _mean(H[-1]), "heldout_delta_mean": _mean(delta), "heldout_delta_worst": float(delta.min())}
