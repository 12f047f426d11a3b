"""EWC: a quadratic penalty on weight changes, weighted by the pre-trained model's diagonal Fisher information."""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from forgetbench.baselines.lwf import frozen_initial_head
from forgetbench.baselines.zscl import DISTILLATION_DATA, distillation_pairs
from forgetbench.errors import DataError
from forgetbench.heads import zeroshot_head
from forgetbench.methods import Batch, FinetuneContext, Method, Param, register
from forgetbench.methods import Strength


def fisher_diagonal(encoder: nn.Module, head: nn.Module, samples: Iterable[tuple[torch.Tensor, Optional[int]]],
                    params: list[nn.Parameter], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Diagonal Fisher: mean over samples of (d log p(y | x) / d theta)^2, one sample at a time.

    ``samples`` yields (image [1, ...], label); p = softmax(head(encoder(x))). A label of None is drawn from p
    itself (with ``generator``): the Fisher of the model's own predictive distribution, which needs no labels. A
    parameter the loss does not reach gets exactly 0. Batched gradients would be cheaper but give (sum of
    gradients)^2, not the sum of squares.
    """
    fisher = [torch.zeros_like(p) for p in params]
    count = 0
    for x, y in samples:
        log_p = F.log_softmax(head(encoder(x).float()), dim=-1)[0]
        if y is None:
            y = int(torch.multinomial(log_p.detach().exp().cpu(), 1, generator=generator))
        grads = torch.autograd.grad(log_p[int(y)], params, allow_unused=True)
        for f, g in zip(fisher, grads):
            if g is not None:
                f.add_(g.detach().pow(2))
        count += 1
    if count == 0:
        raise DataError("EWC: no samples to estimate the Fisher information from")
    return [f / count for f in fisher]


def caption_samples(ctx: FinetuneContext, n: int, source: str, seed: int) -> tuple[nn.Module, list]:
    """The pre-training objective on reference data: (a zero-shot head over the distinct reference captions,
    [(image, index of its own caption)]) -- the image-to-text half of CLIP's contrastive loss, with the frozen text
    tower."""
    images, captions = distillation_pairs(source, n, seed)
    distinct = sorted(set(captions))
    with torch.no_grad():
        text = F.normalize(ctx.model.encode_text(distinct).float(), dim=-1).cpu().numpy()
    head = zeroshot_head(text.astype(np.float32), ctx.model.logit_scale, ctx.device)
    for p in head.parameters():
        p.requires_grad_(False)
    index = {c: i for i, c in enumerate(distinct)}
    return head, [(ctx.model.preprocess(Image.fromarray(im)).unsqueeze(0).to(ctx.device), index[c])
                  for im, c in zip(images, captions)]


@register
class EWC(Method):
    """lam / 2 * sum_i F_i (theta_i - theta0_i)^2 over the encoder weights; theta0 = the frozen encoder's weights.

    F is the diagonal Fisher of the pre-trained model under its *pre-training* objective, on reference data, so that
    it protects what pre-training learnt rather than what the fine-tune target needs (Kirkpatrick et al. take F of
    the previous task; for a foundation model that is pre-training):

    - a CLIP-like model: the image-to-caption log-likelihood log softmax_j(s cos(f(x_i), g(t_j)))[own caption] over
      the distinct captions of ``fisher_samples`` (256) reference image-caption pairs, with the frozen text tower g
      and the model's logit scale s. Reference data (``ref_data``, ``ref_seed``): the pre-training-like mini scenes
      ZSCL distils on (``zscl.distillation_pairs``; disjoint from every evaluated test split), one sample at a time;
    - a model without a text tower (DINOv2, timm): its pre-training objective is not available (DINOv2's
      self-distillation heads are not shipped), so F is the Fisher of its starting classifier (the initial head) on
      ``fisher_samples`` fine-tune training images, with labels drawn from that head's own prediction, never the
      fine-tune labels.

    lam = 1000 is our choice (mammoth requires it and gives no default): F averages per-sample squared gradients,
    whose typical size is far below 1, so lam must be large for the penalty to matter. It was chosen when F was
    measured on the fine-tune task; the strength sweep re-measures it.
    """

    name = "ewc"
    description = "Fisher-weighted squared distance of encoder weights to the starting point"
    citation = "Kirkpatrick et al., Overcoming catastrophic forgetting in neural networks, PNAS 2017"
    hyperparameters = {"lam": Param(1000.0, ge=0), "fisher_samples": Param(256, ge=1),
                       "ref_data": Param("mini-world", choices=DISTILLATION_DATA), "ref_seed": Param(1, ge=1)}
    strength = Strength("lam", grid=(10.0, 100.0, 1e3, 1e4, 1e5, 1e6))

    def setup(self, ctx: FinetuneContext):
        named = [(n, p) for n, p in ctx.student.named_parameters() if p.requires_grad]
        frozen = dict(ctx.frozen.named_parameters())
        self._params = [p for _, p in named]
        self._theta0 = [frozen[n].detach().clone() for n, _ in named]
        generator = torch.Generator().manual_seed(torch.initial_seed() % 2 ** 63)  # the run's seed
        if getattr(ctx.model, "has_text", False):
            head, samples = caption_samples(ctx, self.params["fisher_samples"], self.params["ref_data"],
                                            self.params["ref_seed"])
        else:
            if ctx.train_dataset is None:
                raise DataError("method 'ewc' on a model without a text tower needs the fine-tune training images "
                                "to estimate the Fisher information")
            split = ctx.train_dataset.split(ctx.task.finetune.train_split)
            order = torch.randperm(len(split), generator=generator)[: self.params["fisher_samples"]].tolist()
            head = frozen_initial_head(ctx)
            samples = ((ctx.model.preprocess(split[i][0]).unsqueeze(0).to(ctx.device), None) for i in order)
        was_training = ctx.student.training
        ctx.student.eval()  # no dropout in the estimate
        self.fisher = fisher_diagonal(ctx.student, head, samples, self._params, generator)
        ctx.student.train(was_training)

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        penalty = sum((f * (p - p0).pow(2)).sum() for f, p, p0 in zip(self.fisher, self._params, self._theta0))
        return 0.5 * self.params["lam"] * penalty
