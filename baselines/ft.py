"""Plain end-to-end fine-tuning: the task loss alone."""
from forgetbench.methods import Method, register


@register
class FineTune(Method):
    name = "ft"
    description = "end-to-end fine-tuning, task loss only"
    citation = "standard practice (the reference for forgetting)"
