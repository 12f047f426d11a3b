"""FDA: keep each sample's k-NN structure of the frozen (pre-trained) feature space in the fine-tuned features.

The k-NN graph of the batch is built in the frozen space (cosine) and carried to the student's features, where a
re-weighted SigLIP-style sigmoid loss pulls the neighbours together (weight: their frozen cosine) and pushes the
other samples apart. No labels are used. Proxy-FDA (``proxy_fda.py``) reuses the pieces below.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forgetbench.methods import Batch, FinetuneContext, Method, Param, register
from forgetbench.methods import Strength
from forgetbench.samplers import ClassBalancedBatchSampler, class_similarity_from_features

NEGATIVE_WEIGHTS = ("distance", "uniform")
BIAS_INITS = ("knn-boundary", "siglip")
MAX_CLASSES = 16  # the paper's m: classes per batch when the dataset has enough of them
BOUNDARY_BATCHES = 8  # training batches the initial bias is measured on


def knn_order(frozen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines [B, B] of the frozen features and, per anchor, the other samples sorted by decreasing cosine [B, B-1].

    The first K columns of the order are the anchor's K nearest neighbours; the anchor itself is never in its row.
    """
    r = F.normalize(frozen.float(), dim=-1)
    cos = r @ r.T
    eye = torch.eye(len(cos), dtype=torch.bool, device=cos.device)
    order = cos.masked_fill(eye, float("-inf")).argsort(dim=1, descending=True, stable=True)[:, :-1]
    return cos, order


def negative_weight(ref_cos: torch.Tensor, rule: str) -> torch.Tensor:
    """Weight of a non-neighbour pair: -(1 - frozen cosine) ("distance") or -1 ("uniform", plain SigLIP)."""
    return -(1.0 - ref_cos) if rule == "distance" else -torch.ones_like(ref_cos)


def pair_weights(ref_cos: torch.Tensor, order: torch.Tensor, k: int, rule: str = "distance") -> torch.Tensor:
    """[B, B] weights w_ij: +max(frozen cosine, 0) for the K neighbours of i, negative for the others, 0 for i=i."""
    w = negative_weight(ref_cos, rule)
    neighbours = order[:, :k]
    w = w.scatter(1, neighbours, ref_cos.gather(1, neighbours).clamp_min(0.0))
    return w.fill_diagonal_(0.0)


def knn_boundary(ref_cos: torch.Tensor, order: torch.Tensor, k: int) -> float:
    """Mean over anchors of the frozen cosine halfway between their K-th and (K+1)-th nearest neighbours: where the
    frozen k-NN graph puts the line between a neighbour and a non-neighbour."""
    sims = ref_cos.gather(1, order)
    if sims.shape[1] <= k:  # every other sample is a neighbour: the line is below the farthest one
        return float(sims[:, -1].mean())
    return float(((sims[:, k - 1] + sims[:, k]) / 2).mean())


def classes_per_batch(n_classes: int, batch_size: int) -> int:
    """The automatic m: half the dataset's classes (rounded up), at least 2 and at most ``MAX_CLASSES`` and
    batch_size // 2, so a batch holds fewer classes than the dataset whenever it has 3 or more."""
    return max(1, min(MAX_CLASSES, max(2, math.ceil(n_classes / 2)), batch_size // 2))


class SigmoidScale(nn.Module):
    """SigLIP's learnable temperature t = exp(t') and bias b, initialised as in SigLIP: t' = log 10, b = -10."""

    def __init__(self, log_t: float = math.log(10.0), bias: float = -10.0):
        super().__init__()
        self.log_t = nn.Parameter(torch.tensor(float(log_t)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, cos: torch.Tensor) -> torch.Tensor:
        return self.log_t.exp() * cos + self.bias


def sigmoid_alignment(student: torch.Tensor, weights: torch.Tensor, scale: SigmoidScale,
                      extra_cos: Optional[torch.Tensor] = None,
                      extra_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over anchors i of 1/M_i sum_j softplus(-w_ij (t cos(x_i, x_j) + b)) (the FDA loss).

    With w = +1 / -1 this is SigLIP's loss; w > 0 pulls a pair together, w < 0 pushes it apart, |w| sets how hard.
    ``extra_cos`` / ``extra_weights`` [B, P] add P more pairs per anchor (Proxy-FDA's proxies).
    """
    x = F.normalize(student.float(), dim=-1)
    B = len(x)
    off_diagonal = ~torch.eye(B, dtype=torch.bool, device=x.device)
    terms = F.softplus(-weights * scale(x @ x.T)) * off_diagonal
    total, count = terms.sum(1), B - 1
    if extra_cos is not None:
        total = total + F.softplus(-extra_weights * scale(extra_cos)).sum(1)
        count += extra_cos.shape[1]
    return (total / count).mean()


@register
class FDA(Method):
    """Feature Distribution Alignment (Proxy-FDA without proxies).

    Choices where the paper notes are silent, each a hyper-parameter:

    - sign convention: L_i = 1/(B-1) sum_{j!=i} softplus(-w_ij (t cos(x_i, x_j) + b)), i.e. SigLIP's
      log(1 + exp(-z (t cos + b))) with the label z = +-1 replaced by a weight. Neighbours get w = +max(c_ij, 0)
      (c = frozen cosine), so they are pulled together as much as they were similar; non-neighbours get
      ``negative_weight`` = "uniform": w = -1 (SigLIP's label; the default, so that a near-miss that drifts into
      the neighbourhood, which is how classes collapse, is pushed out as hard as any other) or "distance":
      w = -(1 - c_ij) (dissimilar pairs pushed harder, near-misses barely);
    - t = exp(t') and b are learned (no weight decay) at the task's lr, t' starting at log 10 as in SigLIP. The bias
      starts (``bias_init`` = "knn-boundary") at b = -t x the frozen k-NN boundary (``knn_boundary``: the cosine
      halfway between an anchor's K-th and (K+1)-th frozen neighbour, averaged over ``BOUNDARY_BATCHES`` training
      batches as the sampler draws them), so at the start neighbours sit just above the sigmoid's boundary and
      non-neighbours just below, and both are held there. SigLIP's b = -10 ("siglip") suits its one positive among
      B - 1 negatives, but here puts the boundary at cosine 1: every neighbour pair is pulled towards cosine 1 and
      every non-neighbour sits deep in the flat part of the sigmoid, so negatives exert no force (measured on
      mini-noise: the term's feature gradient was 0.09x the task loss's at lam = 1);
    - ``k`` = 10 neighbours; ``lam`` = 30 (the paper does not give its lambda). The loss averages over the B - 1
      pairs of each anchor and over the anchors, so its feature gradient is small next to a cross-entropy through a
      linear-probe head: on mini-noise (seed 0, first training batches, linear-probe head) the ratio
      ||d L_FDA / d f|| / ||d L_task / d f|| was 0.011 with SigLIP's bias and lam = 1 (plain fine-tuning, in
      effect), 0.021 with the bias at the k-NN boundary and lam = 1, and 0.63-0.76 at lam = 30, where the term
      opposes the task's pull on the features without outweighing it. ``bench/regulariser_strength.py`` measures
      it along a whole run;
    - class-balanced batches (``balanced``) of m classes x n images with hard class mining, the class similarity
      being the cosine of class-mean frozen features of the training split; ``mining_temperature`` sets how strictly
      the nearest classes are preferred (classes are drawn uniformly when the context has no training data to
      compute similarities from). The paper's m x n is 16 x 4 with K > n so that a neighbourhood spans several
      classes; its datasets have tens to hundreds of classes. ``m = 0`` (default) is ``classes_per_batch``: half
      the classes, at least 2, at most 16, so that a batch holds fewer classes than the dataset (16 x 4 on a
      3-class target would put every class in every batch, and mining would select nothing); ``n = 0`` (default)
      is batch_size // m, which keeps the task's batch size when m divides it. On a few-class target n > K, so the
      frozen k-NN graph spans classes only where the pre-trained features mix them (as on mini-noise, whose
      frozen linear probe is near 60%).
    """

    name = "fda"
    description = "k-NN graph of frozen features carried to the student; weighted SigLIP sigmoid loss"
    citation = "Huang et al., Proxy-FDA, ICML 2025 (FDA variant without proxies)"
    hyperparameters = {"lam": Param(30.0, ge=0), "k": Param(10, ge=1),
                       "negative_weight": Param("uniform", choices=NEGATIVE_WEIGHTS),
                       "bias_init": Param("knn-boundary", choices=BIAS_INITS), "balanced": Param(True),
                       "hard_mining": Param(True), "m": Param(0, ge=0), "n": Param(0, ge=0),
                       "mining_temperature": Param(0.1, gt=0)}
    strength = Strength("lam", grid=(0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0))  # Proxy-FDA inherits it

    def __init__(self, **params):
        super().__init__(**params)
        self._class_similarity = None

    def setup(self, ctx: FinetuneContext) -> Optional[list[dict]]:
        log_t = math.log(10.0)
        boundary = self.frozen_knn_boundary(ctx) if self.params["bias_init"] == "knn-boundary" else None
        bias = -10.0 if boundary is None else -math.exp(log_t) * boundary
        self.scale = SigmoidScale(log_t, bias).to(ctx.device)
        return [{"params": list(self.scale.parameters()), "weight_decay": 0.0}]

    def frozen_knn_boundary(self, ctx: FinetuneContext) -> Optional[float]:
        """``knn_boundary`` of the frozen features over the first training batches (None without training data)."""
        if ctx.train_dataset is None:
            return None
        from forgetbench.features import cached_extract

        feats, labels = cached_extract(ctx.frozen, ctx.model, ctx.train_dataset, ctx.task.finetune.train_split,
                                       ctx.device)
        batch_size = getattr(getattr(ctx.task, "train", None), "batch_size", 64)
        sampler = self.batch_sampler(ctx, labels, batch_size, seed=0)
        batches = list(sampler) if sampler is not None else \
            np.array_split(np.random.default_rng(0).permutation(len(labels)), max(1, len(labels) // batch_size))
        values = []
        for idx in batches[:BOUNDARY_BATCHES]:
            ref_cos, order = knn_order(torch.from_numpy(np.asarray(feats)[np.asarray(idx)]))
            if order.shape[1]:
                values.append(knn_boundary(ref_cos, order, min(self.params["k"], order.shape[1])))
        return float(np.mean(values)) if values else None

    def alignment(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        frozen = batch.frozen_features(ctx)  # under the loop's autocast, like every other user of it
        with torch.autocast(batch.features.device.type, enabled=False):  # cosines and top-k in fp32
            ref_cos, order = knn_order(frozen)
            k = min(self.params["k"], order.shape[1])
            weights = pair_weights(ref_cos, order, k, self.params["negative_weight"])
            return sigmoid_alignment(batch.features, weights, self.scale)

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        return self.params["lam"] * self.alignment(ctx, batch)

    def batch_sampler(self, ctx: FinetuneContext, labels, batch_size: int, seed: int):
        if not self.params["balanced"]:
            return None
        m = self.params["m"] or classes_per_batch(len(np.unique(np.asarray(labels))), batch_size)
        n = self.params["n"] or max(1, batch_size // m)
        return ClassBalancedBatchSampler(labels, m, n, self.class_similarity(ctx), seed=seed,
                                         hard_mining=self.params["hard_mining"],
                                         temperature=self.params["mining_temperature"])

    def class_similarity(self, ctx: FinetuneContext):
        """Cosine of class-mean frozen features of the training split (computed once, from the feature cache)."""
        if self._class_similarity is None and self.params["hard_mining"] and ctx.train_dataset is not None:
            from forgetbench.features import cached_extract

            feats, labels = cached_extract(ctx.frozen, ctx.model, ctx.train_dataset,
                                           ctx.task.finetune.train_split, ctx.device)
            self._class_similarity = class_similarity_from_features(feats, labels)
        return self._class_similarity

