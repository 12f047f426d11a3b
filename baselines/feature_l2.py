"""Feature-L2: keep the fine-tuned output embedding of each image close to the frozen (pre-trained) encoder's."""
import torch
import torch.nn.functional as F

from forgetbench.methods import Method, Param, register
from forgetbench.methods import Strength


def feature_l2(student: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    """mean_i ||normalize(s_i) - normalize(r_i)||^2 over the batch."""
    return (F.normalize(student.float(), dim=-1) - F.normalize(frozen.float(), dim=-1)).pow(2).sum(-1).mean()


@register
class FeatureL2(Method):
    """beta * mean ||normalize(f_theta(x)) - normalize(f_0(x))||^2 on the output embedding.

    beta = 10: with it, the design prototype of the mini world lost nothing on the other concepts at lr 1e-3.
    """

    name = "feature-l2"
    description = "beta * mean squared distance of normalised output features to the frozen encoder's"
    citation = "feature-distance baseline (LDIFS without intermediate layers; Mukhoti et al. 2024 discuss it)"
    hyperparameters = {"beta": Param(10.0, ge=0)}
    strength = Strength("beta", grid=(0.01, 0.1, 1.0, 10.0, 100.0, 1000.0))

    def loss(self, ctx, batch):
        frozen = batch.frozen_features(ctx)  # under the loop's autocast, like every other user of it
        with torch.autocast(batch.features.device.type, enabled=False):
            return self.params["beta"] * feature_l2(batch.features, frozen)
