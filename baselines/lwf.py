"""LwF: distil the frozen (pre-trained) model's zero-shot predictions (through the initial head) into the student."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from forgetbench.methods import Batch, FinetuneContext, Method, Param, register
from forgetbench.methods import Strength


def frozen_initial_head(ctx: FinetuneContext) -> torch.nn.Module:
    """A frozen copy of the fine-tune head holding its weights from before training (``ctx.head_initial``)."""
    head = copy.deepcopy(ctx.head)
    if ctx.head_initial:
        head.load_state_dict(ctx.head_initial)
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def distillation_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T)): Hinton's KD, zero when the logits agree."""
    log_p = F.log_softmax(teacher_logits.float() / T, dim=-1)
    log_q = F.log_softmax(student_logits.float() / T, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * T ** 2


@register
class LwF(Method):
    """lam * T^2 * KL(softmax(h0(f_0(x)) / T) || softmax(h0(f_theta(x)) / T)), h0 = the head before training.

    The "old task" is the model's own starting classifier of the fine-tune classes (the zero-shot head under the
    default head initialisation), kept frozen; the trained head is separate. T = 2 and lam = 1 as in Li & Hoiem
    (tllib's defaults are T = 3, trade-off 4). KL rather than cross-entropy: same gradient, and 0 at the start.
    """

    name = "lwf"
    description = "distillation of the frozen encoder's initial-head logits into the student's, temperature T"
    citation = "Li & Hoiem, Learning without Forgetting, TPAMI 2017"
    hyperparameters = {"lam": Param(1.0, ge=0), "T": Param(2.0, gt=0)}
    strength = Strength("lam", grid=(0.01, 0.1, 1.0, 10.0, 100.0, 1000.0))

    def setup(self, ctx: FinetuneContext):
        self.head0 = frozen_initial_head(ctx)

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        frozen = batch.frozen_features(ctx)  # under the loop's autocast, like every other user of it
        with torch.autocast(batch.features.device.type, enabled=False):  # logits and softmaxes in fp32
            teacher = self.head0(frozen)
            student = self.head0(batch.features.float())
            return self.params["lam"] * distillation_kl(teacher, student, self.params["T"])
