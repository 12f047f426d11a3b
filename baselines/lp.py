"""Linear probing: the encoder stays frozen; the head is the task's fixed linear-probe protocol fitted on it."""
from forgetbench.methods import Method, register


@register
class LinearProbe(Method):
    name = "lp"
    description = "linear probe on frozen features (no encoder update, so no forgetting by construction)"
    citation = "Kumar et al., ICLR 2022 (LP baseline)"
    trains_encoder = False
    head_init = "linear-probe"
