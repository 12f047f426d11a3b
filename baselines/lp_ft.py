"""LP-FT: fit a linear probe on frozen features first, then fine-tune everything from that head."""
from forgetbench.methods import LR_SCALE, LR_STRENGTH, Method, register


@register
class LinearProbeThenFineTune(Method):
    name = "lp-ft"
    description = "linear-probe head initialisation, then end-to-end fine-tuning"
    citation = "Kumar et al., Fine-Tuning can Distort Pretrained Features..., ICLR 2022"
    head_init = "linear-probe"
    hyperparameters = {"lr_scale": LR_SCALE}  # 1: the task's tuned learning rate
    strength = LR_STRENGTH
