"""CoOp: learned prompt context, cross-entropy over the base classes only (the prompt-tuning protocol's plain run)."""
from __future__ import annotations

from forgetbench.methods import LR_SCALE, LR_STRENGTH, register
from forgetbench.prompt_tuning import PromptMethod


@register
class CoOp(PromptMethod):
    """Plain CoOp: the context vectors trained by cross-entropy over the base classes, nothing else (its strength
    knob is how far it trains: the learning rate as a multiple of the task's)."""

    name = "coop"
    description = "learned prompt context before the class name, both towers frozen; cross-entropy only"
    citation = "Zhou et al., Learning to Prompt for Vision-Language Models (CoOp), IJCV 2022"
    hyperparameters = {"lr_scale": LR_SCALE}
    strength = LR_STRENGTH
