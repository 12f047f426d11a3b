"""EWC: a quadratic penalty on weight changes, weighted by the starting model's diagonal Fisher information."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from forgetbench.baselines.lwf import frozen_initial_head
from forgetbench.errors import DataError
from forgetbench.methods import Batch, FinetuneContext, Method, Param, register
from forgetbench.methods import Strength


def fisher_diagonal(encoder: nn.Module, head: nn.Module, samples: Iterable[tuple[torch.Tensor, int]],
                    params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Empirical diagonal Fisher: mean over samples of (d log p(y | x) / d theta)^2, one sample at a time.

    ``samples`` yields (image [1, ...], label); p = softmax(head(encoder(x))). A parameter the loss does not reach
    gets exactly 0. Batched gradients would be cheaper but give (sum of gradients)^2, not the sum of squares.
    """
    fisher = [torch.zeros_like(p) for p in params]
    count = 0
    for x, y in samples:
        log_p = F.log_softmax(head(encoder(x).float()), dim=-1)[0, int(y)]
        grads = torch.autograd.grad(log_p, params, allow_unused=True)
        for f, g in zip(fisher, grads):
            if g is not None:
                f.add_(g.detach().pow(2))
        count += 1
    if count == 0:
        raise DataError("EWC: no samples to estimate the Fisher information from")
    return [f / count for f in fisher]


@register
class EWC(Method):
    """lam / 2 * sum_i F_i (theta_i - theta0_i)^2 over the encoder weights.

    F is the empirical diagonal Fisher of the *starting* model (encoder + the head before training), estimated in
    ``setup`` on ``fisher_samples`` (256) images of the fine-tune training split, drawn with the run's seed. theta0 is
    the frozen encoder's weights. lam = 1000 is our choice (mammoth requires it and gives no default): F averages
    per-sample squared gradients, whose typical size is far below 1, so lam must be large for the penalty to
    matter.
    """

    name = "ewc"
    description = "Fisher-weighted squared distance of encoder weights to the starting point"
    citation = "Kirkpatrick et al., Overcoming catastrophic forgetting in neural networks, PNAS 2017"
    hyperparameters = {"lam": Param(1000.0, ge=0), "fisher_samples": Param(256, ge=1)}
    strength = Strength("lam", grid=(10.0, 100.0, 1e3, 1e4, 1e5, 1e6))

    def setup(self, ctx: FinetuneContext):
        if ctx.train_dataset is None:
            raise DataError("method 'ewc' needs the fine-tune training data to estimate the Fisher information")
        split = ctx.train_dataset.split(ctx.task.finetune.train_split)
        named = [(n, p) for n, p in ctx.student.named_parameters() if p.requires_grad]
        frozen = dict(ctx.frozen.named_parameters())
        self._params = [p for _, p in named]
        self._theta0 = [frozen[n].detach().clone() for n, _ in named]
        order = torch.randperm(len(split))[: self.params["fisher_samples"]].tolist()  # seeded by the run
        head0 = frozen_initial_head(ctx)
        was_training = ctx.student.training
        ctx.student.eval()  # no dropout in the estimate
        samples = ((ctx.model.preprocess(split[i][0]).unsqueeze(0).to(ctx.device), split[i][1]) for i in order)
        self.fisher = fisher_diagonal(ctx.student, head0, samples, self._params)
        ctx.student.train(was_training)

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        penalty = sum((f * (p - p0).pow(2)).sum() for f, p, p0 in zip(self.fisher, self._params, self._theta0))
        return 0.5 * self.params["lam"] * penalty
