"""Fine-tuning, then post-hoc calibration of absent classes' logits ("Fine-Tuning is Fine, if Calibrated")."""
from __future__ import annotations

import numpy as np
import torch

from forgetbench.errors import SpecError
from forgetbench.evaluate.absent import average_logit_gap
from forgetbench.methods import FinetuneContext, Method, Param, register


@register
class Calibrate(Method):
    """Plain fine-tuning; then gamma = ALG on the training data is added to the head's bias of absent classes.

    Absent classes are those without a training sample. gamma is computed on (up to ``max_samples``, seeded) training
    images as the paper's caption says, not on the evaluated split as the released code does. When every class is
    seen, gamma = 0 and nothing changes. The gamma used is left in ``ctx.state['calibrate_gamma']``.
    """

    name = "calibrate"
    description = "fine-tune, then add the average logit gap to absent classes' logits"
    citation = "Mai et al., Fine-Tuning is Fine, if Calibrated, NeurIPS 2024 (OSU-MLB)"
    hyperparameters = {"max_samples": Param(4096, ge=1)}

    @torch.no_grad()
    def finalize(self, ctx: FinetuneContext) -> None:
        from forgetbench.features import loader

        split = ctx.train_dataset.split(ctx.task.finetune.train_split)
        all_labels = ctx.train_dataset.labels(ctx.task.finetune.train_split)
        bias = getattr(ctx.head, "bias", None)
        if bias is None:
            raise SpecError("method 'calibrate' needs a head with a bias (a linear head)")
        seen = np.zeros(bias.shape[0], dtype=bool)
        seen[np.unique(all_labels)] = True
        gamma = 0.0
        if not seen.all():
            rng = np.random.default_rng(0)
            idx = np.sort(rng.permutation(len(split))[: self.params["max_samples"]]).tolist()
            was_training = ctx.student.training
            ctx.student.eval()
            logits, labels = [], []
            for x, y in loader(torch.utils.data.Subset(split, idx), ctx.model.preprocess, 256):
                logits.append(ctx.head(ctx.student(x.to(ctx.device)).float()).cpu())
                labels.append(y)
            ctx.student.train(was_training)
            gamma = average_logit_gap(torch.cat(logits).numpy(), torch.cat(labels).numpy(), seen)
            bias[torch.from_numpy(~seen).to(bias.device)] += gamma
        ctx.state["calibrate_gamma"] = gamma
