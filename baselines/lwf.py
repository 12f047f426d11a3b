"""LwF: distil the frozen (pre-trained) model's zero-shot predictions (through the initial head) into the student."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from forgetbench.baselines.flyp import VOCABULARIES, vocabulary_datasets
from forgetbench.evaluate.probe import zeroshot_weights
from forgetbench.heads import zeroshot_head
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
    """lam * mean over old heads h of T^2 * KL(softmax(h(f_0(x)) / T) || softmax(h(f_theta(x)) / T)).

    The old heads, frozen: the starting classifier of the fine-tune classes h0 (the head before training: zero-shot or
    linear probe, per the task; the trained head is separate) and, with a text tower and ``vocabulary`` = "task" (the
    default), the zero-shot classifier of each held-out dataset of the task (its class prompts through the frozen text
    tower, at the model's logit scale), so that LwF constrains more than the target classes' directions: the mini
    world has no other named concepts than its datasets', and LwF-VR (ZSCL's table) likewise distils over a wider
    vocabulary. Each old head keeps its own softmax, as Li & Hoiem's old tasks do; the KLs are averaged (not summed)
    so that lam means the same whatever the number of held-out datasets. The held-out datasets' class names, not
    their images, are all the method sees of them. "target" keeps h0 alone; so does a model without a text tower.
    T = 2 and lam = 1 as in Li & Hoiem (tllib's defaults are T = 3, trade-off 4). KL rather than cross-entropy: same
    gradient, and 0 at the start.
    """

    name = "lwf"
    description = "distillation of the frozen encoder's initial-head logits into the student's, temperature T"
    citation = "Li & Hoiem, Learning without Forgetting, TPAMI 2017"
    hyperparameters = {"lam": Param(1.0, ge=0), "T": Param(2.0, gt=0),
                       "vocabulary": Param("task", choices=VOCABULARIES)}
    strength = Strength("lam", grid=(0.01, 0.1, 1.0, 10.0, 100.0, 1000.0))

    def setup(self, ctx: FinetuneContext):
        self.heads = [frozen_initial_head(ctx)]
        if getattr(ctx.model, "has_text", False):
            for dataset in vocabulary_datasets(ctx, self.params["vocabulary"])[1:]:
                head = zeroshot_head(zeroshot_weights(ctx.model, dataset).astype("float32"), ctx.model.logit_scale,
                                     ctx.device)
                self.heads.append(head.requires_grad_(False))

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        frozen = batch.frozen_features(ctx)  # under the loop's autocast, like every other user of it
        with torch.autocast(batch.features.device.type, enabled=False):  # logits and softmaxes in fp32
            student = batch.features.float()
            kls = [distillation_kl(h(frozen), h(student), self.params["T"]) for h in self.heads]
            return self.params["lam"] * torch.stack(kls).mean()
