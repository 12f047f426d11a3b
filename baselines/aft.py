"""AFT (Adaptive Feature Transfer): match the batch kernel of the student's features to that of adaptively re-weighted
frozen features (the pre-trained encoder's), so that only the frozen dimensions that help the task constrain the
student."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from forgetbench.methods import Batch, FinetuneContext, Method, Param, register
from forgetbench.methods import Strength


def _centred_rows(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(0, keepdim=True)
    return x / (x.norm(dim=1, keepdim=True) + 1e-8)


def aft_distance(student: torch.Tensor, frozen: torch.Tensor, scales: Optional[torch.Tensor] = None) -> torch.Tensor:
    """R = sqrt(mean_ij (K_phi - K_rhopsi)_ij^2 + 1e-8) of batch-centred, row-normalised linear kernels.

    ``scales`` (sigma(s) in AFT) weights the frozen encoder's dimensions; None means all 1 (then R is a CKA-like
    distance).
    """
    phi = _centred_rows(student.float())
    psi = frozen.float() if scales is None else frozen.float() * scales
    psi = _centred_rows(psi)
    return ((phi @ phi.T - psi @ psi.T).pow(2).mean() + 1e-8).sqrt()


@register
class AFT(Method):
    """beta * R(phi, psi * sigmoid(s)); s (one weight per frozen-feature dimension) starts at 0 and is learned jointly.

    As in amazon-science/adaptive-feature-transfer (``KernelPrior``): linear kernel, learned scales in their own
    parameter group at ``prior_lr`` = 1e-2 (no weight decay), beta (``prec``) = 10 as in its README example.
    """

    name = "aft"
    description = "kernel of student features matched to the kernel of learned-weight frozen features"
    citation = "Qiu et al., Transferring Knowledge from Large Foundation Models to Small Downstream Models, ICML 2024"
    hyperparameters = {"beta": Param(10.0, ge=0), "prior_lr": Param(1e-2, gt=0)}
    strength = Strength("beta", grid=(0.01, 0.1, 1.0, 10.0, 100.0, 1000.0))

    def setup(self, ctx: FinetuneContext) -> Optional[list[dict]]:
        self.s = nn.Parameter(torch.zeros(ctx.model.feature_dim, device=ctx.device))
        return [{"params": [self.s], "lr": self.params["prior_lr"], "weight_decay": 0.0}]

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        frozen = batch.frozen_features(ctx)  # under the loop's autocast, like every other user of it
        with torch.autocast(batch.features.device.type, enabled=False):  # the kernels in fp32
            return self.params["beta"] * aft_distance(batch.features, frozen, self.s.sigmoid())
