"""Classification heads of a fine-tune: a linear layer on L2-normalised features, started from the text tower's class
embeddings (zero-shot) or from the task's linear probe on the frozen features."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.base import ImageDataset
from .evaluate.probe import fit_linear_probe


class Head(nn.Linear):
    """Linear classifier on L2-normalised features (CLIP zero-shot heads have this form)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(features, dim=-1))


def zeroshot_head(embeddings: np.ndarray, logit_scale: float, device: str) -> Head:
    """The zero-shot classifier: class text embeddings [C, D] times the logit scale, no bias."""
    head = Head(embeddings.shape[1], embeddings.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(embeddings).float() * logit_scale)
        head.bias.zero_()
    return head.to(device)


def initial_head(kind: str, evaluation, dataset: ImageDataset, embeddings: np.ndarray | None,
                 features: Callable[[ImageDataset, str], tuple[np.ndarray, np.ndarray]] | None = None,
                 refit_with_val: bool = True) -> Head:
    """The head a fine-tune starts from: ``zeroshot`` (``embeddings`` x logit scale) or ``linear-probe``.

    The probe is the evaluation's (its C grid, its train and validation splits), fitted on ``features(dataset,
    split)`` (default: the frozen reference's, cached). Classes without training samples (the absent classes of an
    absent-class task) keep their zero-shot rows (zero rows without a text tower, which also gets a probe head).
    ``refit_with_val=False``: the probe never sees the validation labels (tuning scores the fine-tune on them).
    """
    model = evaluation.reference.model
    if embeddings is not None:
        head = zeroshot_head(embeddings, model.logit_scale, "cpu")
    else:
        head = Head(model.feature_dim, len(dataset.classnames))
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    if kind != "zeroshot" or embeddings is None:  # linear-probe (also the fallback without a text tower)
        train, val, _ = evaluation.splits
        lp = evaluation.spec.linear_probe
        features = features or evaluation.reference.features
        clf, _, _ = fit_linear_probe(features(dataset, train), features(dataset, val), lp.C_grid, lp.max_iter,
                                     refit_with_val=refit_with_val)
        coef, intercept = clf.coef_, clf.intercept_
        if len(clf.classes_) == 2:  # scikit-learn keeps one row for two classes: the same softmax, split in two
            coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
        rows = torch.from_numpy(clf.classes_.astype(np.int64))
        with torch.no_grad():
            head.weight[rows] = torch.from_numpy(coef).float()
            head.bias[rows] = torch.from_numpy(intercept).float()
    return head.to(evaluation.reference.device)


def head_correct(head: nn.Module, features: np.ndarray, labels: np.ndarray, device: str) -> np.ndarray:
    """[N] bool: whether the head classifies each sample correctly from its (unnormalised) features."""
    with torch.no_grad():
        pred = head(torch.from_numpy(features).to(device)).argmax(1).cpu().numpy()
    return pred == labels


def head_accuracy(head: nn.Module, features: np.ndarray, labels: np.ndarray, device: str) -> float:
    """Percent of samples the head classifies correctly from their (unnormalised) features."""
    return 100.0 * float(head_correct(head, features, labels, device).mean())
