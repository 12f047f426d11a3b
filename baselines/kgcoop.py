"""KgCoOp-like: CoOp plus the distance of the learned class text features from the hand-crafted ones."""
from __future__ import annotations

from forgetbench.methods import Param, Strength, register
from forgetbench.prompt_tuning import PromptBatch, PromptContext, PromptMethod


@register
class KgCoOp(PromptMethod):
    """CoOp + lam x mean over the base classes of ||w_learned - w_handcrafted||^2, both L2-normalised.

    As in KgCoOp (Yao et al.), the hand-crafted features are the frozen text tower's; here they are the dataset's own
    prompt templates, averaged as its zero-shot head is (KgCoOp uses one hand-written prompt per dataset). lam = 8 is
    KgCoOp's default weight."""

    name = "kgcoop"
    description = "CoOp + squared distance of learned from hand-crafted class text features"
    citation = "Yao, Zhang, Xu, Visual-Language Prompt Tuning with Knowledge-guided Context Optimization, CVPR 2023"
    hyperparameters = {"lam": Param(8.0, ge=0)}
    strength = Strength("lam", grid=(0.1, 1.0, 8.0, 100.0, 1000.0))

    def loss(self, ctx: PromptContext, batch: PromptBatch):
        return self.params["lam"] * (batch.text_features - ctx.handcrafted).pow(2).sum(-1).mean()
