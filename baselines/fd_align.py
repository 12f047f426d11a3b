"""FD-Align: keep the image features' distribution over "spurious" text prototypes equal to the zero-shot model's."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from forgetbench.baselines.flyp import VOCABULARIES, prompt_embeddings, require_text_tower, vocabulary_datasets
from forgetbench.methods import Batch, FinetuneContext, Method, Param, register
from forgetbench.methods import Strength


def kmeans_prototypes(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centres [min(k, distinct rows), D] of the rows (seeded, 10 restarts)."""
    from sklearn.cluster import KMeans

    k = min(k, len(np.unique(embeddings.round(6), axis=0)))
    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit(embeddings).cluster_centers_


def prototype_kl(frozen: torch.Tensor, student: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """KL(softmax(P n(f_0)) || softmax(P n(f_theta))), averaged over batch *and* prototypes like torch's KLDivLoss
    with its default 'mean' reduction, which the FD-Align code uses (so its cscale = 20 keeps its meaning)."""
    log_p = F.log_softmax(F.normalize(frozen.float(), dim=-1) @ prototypes.T, dim=-1)
    log_q = F.log_softmax(F.normalize(student.float(), dim=-1) @ prototypes.T, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum() / log_p.numel()


@register
class FDAlign(Method):
    """cscale * KL(softmax(P f_0(x)) || softmax(P f_theta(x))), f_0 the frozen encoder.

    P: k-means (k = 20, seeded) centres of the normalised text embeddings of every class x template prompt of the
    vocabulary (``vocabulary`` = "task", the default: the fine-tune dataset's classes and the task's held-out
    datasets' class names, so that the prototypes span more than the target classes' text directions, as FD-Align's
    80 ImageNet contexts do; "target": the fine-tune dataset's alone), times the model's logit scale (FD-Align scales its prototypes by CLIP's logit scale and
    normalises only the image features). Deviation: FD-Align first averages each template over the classes, drops
    outliers with an IsolationForest and clusters those 80 ImageNet "context" vectors; the mini world has 3 templates
    per dataset, too few to cluster, so we cluster the prompts themselves (k is capped at their number).
    """

    name = "fd-align"
    description = "KL between frozen and student distributions over k-means text prototypes"
    citation = "Song et al., FD-Align: Feature Discrimination Alignment, NeurIPS 2023 (skingorz/FD-Align)"
    hyperparameters = {"cscale": Param(20.0, ge=0), "k": Param(20, ge=1), "kmeans_seed": Param(0, ge=0),
                       "vocabulary": Param("task", choices=VOCABULARIES)}
    strength = Strength("cscale", grid=(0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0))

    def setup(self, ctx: FinetuneContext):
        require_text_tower(ctx, self.name)
        emb = torch.cat([prompt_embeddings(ctx, d).flatten(0, 1)
                         for d in vocabulary_datasets(ctx, self.params["vocabulary"])])
        centres = kmeans_prototypes(emb.cpu().double().numpy(), self.params["k"],
                                    self.params["kmeans_seed"])
        self.prototypes = torch.from_numpy(centres).float().to(ctx.device) * ctx.model.logit_scale

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        frozen = batch.frozen_features(ctx)  # under the loop's autocast, like every other user of it
        with torch.autocast(batch.features.device.type, enabled=False):  # the softmaxes in fp32
            return self.params["cscale"] * prototype_kl(frozen, batch.features, self.prototypes)
