"""CoOp + Proxy-FDA: Proxy-FDA's alignment applied to the prompt-tuned class text features.

The Proxy-FDA paper (Table 2) adds its loss to CoOp without saying, in what we could read, which features it aligns
or how; what this method assumes, each a hyper-parameter or written here:

- the "batch" Proxy-FDA aligns is the set of base classes' text features at each step (every base class is in every
  step: CoOp encodes them all); the frozen space is the hand-crafted prompts' text features of the same classes (the
  dataset's templates, averaged as its zero-shot head is), the student space the learned prompts' features. The image
  tower is frozen, so its features carry no structure to keep;
- the k-NN graph is built among those classes in the hand-crafted space; ``k`` = 2 (a mini dataset has 4-5 base
  classes, so FDA's 10 would leave no non-neighbours; clamped to C_base - 1);
- the loss, the proxies and their generator are Proxy-FDA's own (``baselines/proxy_fda.py``, reused, not copied); the
  sigmoid's bias starts at the k-NN boundary of the hand-crafted features (as FDA's starts at that of the frozen image
  features), its temperature at 10;
- ``lam`` = 8, KgCoOp's weight, so that both regularisers of the table run at the same declared weight: the paper
  gives no lambda for prompt tuning, and it is not tuned here (its strength grid is for a sweep).
"""
from __future__ import annotations

import math

from forgetbench.baselines.fda import NEGATIVE_WEIGHTS, SigmoidScale, knn_boundary, knn_order
from forgetbench.baselines.proxy_fda import ProxyFDA, ProxyGenerator
from forgetbench.methods import Batch, Param, Strength, register
from forgetbench.prompt_tuning import PromptBatch, PromptContext, PromptMethod


@register
class CoOpProxyFDA(PromptMethod):
    name = "coop-proxy-fda"
    description = "CoOp + Proxy-FDA's k-NN alignment of learned to hand-crafted class text features, with proxies"
    citation = "Huang et al., Proxy-FDA: Proxy-based Feature Distribution Alignment, ICML 2025 (Table 2, CoOp + Proxy-FDA)"
    hyperparameters = {"lam": Param(8.0, ge=0), "k": Param(2, ge=1),
                       "negative_weight": Param("uniform", choices=NEGATIVE_WEIGHTS), "s": Param(0.4, gt=0),
                       "alpha": Param(0.1, ge=0), "proxy_tau": Param(0.1, gt=0), "proxy_lr": Param(1e-3, gt=0),
                       "hidden": Param(32, ge=1)}
    strength = Strength("lam", grid=(0.1, 1.0, 8.0, 100.0, 1000.0))

    def setup(self, ctx: PromptContext):
        shared = {k: v for k, v in self.params.items() if k in ProxyFDA.hyperparameters}
        self.fda = ProxyFDA(**shared, balanced=False, hard_mining=False)
        ref_cos, order = knn_order(ctx.handcrafted)
        k = min(self.params["k"], order.shape[1])
        log_t = math.log(10.0)
        self.fda.scale = SigmoidScale(log_t, -math.exp(log_t) * knn_boundary(ref_cos, order, k)).to(ctx.device)
        self.fda.generator = ProxyGenerator(ctx.handcrafted.shape[1], self.params["hidden"]).to(ctx.device)
        return [{"params": list(self.fda.scale.parameters()), "weight_decay": 0.0},
                {"params": list(self.fda.generator.parameters()), "lr": self.params["proxy_lr"],
                 "weight_decay": 0.0}]

    def loss(self, ctx: PromptContext, batch: PromptBatch):
        classes = Batch(images=None, labels=None, features=batch.text_features, logits=None,
                        _frozen_features=ctx.handcrafted)  # the classes are the batch; hand-crafted is the frozen space
        fda, generator = self.fda.losses(None, classes)
        return self.params["lam"] * fda + generator
