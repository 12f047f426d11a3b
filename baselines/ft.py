"""Plain end-to-end fine-tuning: the task loss alone."""
from forgetbench.methods import LR_SCALE, LR_STRENGTH, Method, register


@register
class FineTune(Method):
    name = "ft"
    description = "end-to-end fine-tuning, task loss only"
    citation = "standard practice (the reference for forgetting)"
    hyperparameters = {"lr_scale": LR_SCALE}  # 1: the task's tuned learning rate
    strength = LR_STRENGTH
