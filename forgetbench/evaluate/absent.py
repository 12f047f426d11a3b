"""The absent-class protocol: fine-tune on the seen classes S of a dataset, evaluate over all of its classes Y.

Definitions follow Mai et al., "Fine-Tuning is Fine, if Calibrated" (NeurIPS 2024; code ``get_accuracies``):

- ``a/b`` accuracy: samples whose true class is in group a, predicted among the candidate classes of group b.
  ``seen_all``, ``absent_all`` and ``all_all`` predict over every class; ``seen_seen`` and ``absent_absent`` over
  their own group only. Percentages.
- Calibration adds gamma to every absent class's logit. ALG (average logit gap) sets gamma from training data:
  the mean non-ground-truth seen logit minus the mean absent logit.
- AUSUC: gamma swept over every value where some sample's predicted group flips; the area under the curve of
  absent/all (y) against seen/all (x), both as fractions, so it lies in [0, 1].
- NCM: nearest class mean by cosine, class means from the normalised training features of *every* class (the
  "oracle" data); a diagnostic of whether absent classes are still separable in feature space.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import auc

from .probe import normalize

GROUPS = ("all_all", "seen_all", "absent_all", "seen_seen", "absent_absent")


def _check(logits: Any, labels: Any, seen_mask: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    seen = np.asarray(seen_mask, dtype=bool)
    if z.ndim != 2 or y.shape != (len(z),) or seen.shape != (z.shape[1],):
        raise ValueError(f"{what}: logits [N, C], labels [N], seen_mask [C]; got {z.shape}, {y.shape}, {seen.shape}")
    if len(y) and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"{what}: labels must be class indices in [0, {z.shape[1]})")
    return z, y, seen


def average_logit_gap(logits, labels, seen_mask) -> float:
    """ALG: mean_i mean_{c in S, c != y_i} z_c(x_i)  -  mean_i mean_{c in U} z_c(x_i).

    ``logits`` [N, C], ``labels`` [N] (all in S), ``seen_mask`` [C] bool (S = seen, U = the rest). The gap that added
    to the absent classes' logits puts them on the seen classes' scale. 0.0 when no class is absent.
    """
    z, y, seen = _check(logits, labels, seen_mask, "average_logit_gap")
    if seen.all():
        return 0.0
    if not seen[y].all():
        raise ValueError("average_logit_gap: every label must be a seen class")
    n_other_seen = seen.sum() - 1
    if n_other_seen < 1:
        raise ValueError("average_logit_gap needs at least two seen classes (a non-ground-truth seen logit)")
    seen_sum = (z * seen).sum(1) - z[np.arange(len(z)), y]
    return float((seen_sum / n_other_seen).mean() - z[:, ~seen].mean(1).mean())


def _percent(hits: np.ndarray) -> float | None:
    return 100.0 * float(hits.mean()) if hits.size else None


def group_accuracies(logits, labels, seen_mask, gamma: float = 0.0) -> dict[str, float]:
    """The five ``a/b`` accuracies with ``gamma`` added to the absent classes' logits (groups without samples are
    left out). Ties go to the lower class index, as ``argmax`` does."""
    z, y, seen = _check(logits, labels, seen_mask, "group_accuracies")
    z = z + gamma * ~seen
    on_seen = seen[y]
    masked = lambda cols: np.where(cols, z, -np.inf).argmax(1)  # noqa: E731  (argmax among candidate classes)
    pred_all, pred_seen, pred_absent = z.argmax(1), masked(seen), masked(~seen)
    out = {"all_all": _percent(pred_all == y), "seen_all": _percent((pred_all == y)[on_seen]),
           "absent_all": _percent((pred_all == y)[~on_seen]), "seen_seen": _percent((pred_seen == y)[on_seen]),
           "absent_absent": _percent((pred_absent == y)[~on_seen])}
    return {k: v for k, v in out.items() if v is not None}


def seen_unseen_curve(logits, labels, seen_mask) -> tuple[np.ndarray, np.ndarray]:
    """(seen/all, absent/all) as fractions at every distinct gamma where a sample's predicted group flips, from
    gamma = -inf (only seen classes predicted) to +inf (only absent classes). O(N log N)."""
    z, y, seen = _check(logits, labels, seen_mask, "seen_unseen_curve")
    on_seen = seen[y]
    if on_seen.all() or not on_seen.any() or seen.all() or not seen.any():
        raise ValueError("seen_unseen_curve needs test samples of both seen and absent classes")
    s = np.where(seen, z, -np.inf)
    u = np.where(~seen, z, -np.inf)
    gap = s.max(1) - u.max(1)  # an absent class wins iff gamma > gap
    correct_in_group = np.where(on_seen, s.argmax(1) == y, u.argmax(1) == y)
    order = np.argsort(gap, kind="stable")
    gap, ok, is_seen = gap[order], correct_in_group[order], on_seen[order]
    switched_seen = np.concatenate([[0], np.cumsum(ok & is_seen)])  # first k samples predicted absent
    switched_absent = np.concatenate([[0], np.cumsum(ok & ~is_seen)])
    ks = np.unique(np.concatenate([np.searchsorted(gap, np.unique(gap), side="left"), [len(gap)]]))
    seen_acc = (switched_seen[-1] - switched_seen[ks]) / is_seen.sum()
    absent_acc = switched_absent[ks] / (~is_seen).sum()
    return seen_acc, absent_acc


def ausuc(logits, labels, seen_mask) -> float:
    """Area under the seen-unseen accuracy curve (fractions, so in [0, 1]); ``sklearn.metrics.auc`` as the paper's
    code does."""
    seen_acc, absent_acc = seen_unseen_curve(logits, labels, seen_mask)
    return float(auc(seen_acc, absent_acc))


def ncm_accuracies(train_features, train_labels, test_features, test_labels, seen_mask) -> dict[str, float]:
    """Nearest-class-mean (cosine) accuracies over every class, class means from normalised training features of
    every class: ``all_all``, ``seen_all``, ``absent_all``."""
    seen = np.asarray(seen_mask, dtype=bool)
    ytr = np.asarray(train_labels, dtype=np.int64)
    missing = sorted(set(range(len(seen))) - set(ytr.tolist()))
    if missing:
        raise ValueError(f"ncm_accuracies: classes {missing} have no training sample")
    f = normalize(train_features)
    means = normalize(np.stack([f[ytr == c].mean(0) for c in range(len(seen))]))
    scores = normalize(test_features) @ means.T
    acc = group_accuracies(scores, test_labels, seen)
    return {k: acc[k] for k in ("all_all", "seen_all", "absent_all") if k in acc}


def absent_report(test_logits, test_labels, seen_mask, train_logits, train_labels) -> dict[str, Any]:
    """Accuracies before and after ALG calibration (gamma from the training logits of seen-class samples), and
    AUSUC, of one classifier."""
    gamma = average_logit_gap(train_logits, train_labels, seen_mask)
    return {"acc": group_accuracies(test_logits, test_labels, seen_mask),
            "gamma": gamma,
            "calibrated": group_accuracies(test_logits, test_labels, seen_mask, gamma),
            "ausuc": ausuc(test_logits, test_labels, seen_mask)}
