"""WiSE-FT: fine-tune, then interpolate every weight (head included) between the start and the fine-tuned model."""
import torch

from forgetbench.methods import Method, Param, register
from forgetbench.methods import Strength


@register
class WiseFT(Method):
    name = "wise-ft"
    description = "theta = (1 - alpha) * theta_0 + alpha * theta_ft, encoder and head"
    citation = "Wortsman et al., Robust fine-tuning of zero-shot models, CVPR 2022"
    hyperparameters = {"alpha": Param(0.5, ge=0, le=1)}
    # alpha 1 is the fine-tuned model, 0 the starting one; every value is evaluated from one fine-tune
    strength = Strength("alpha", grid=(1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1), stronger="down", post_hoc=True)

    @torch.no_grad()
    def finalize(self, ctx):
        a = self.params["alpha"]
        start = dict(ctx.frozen.state_dict())
        for module, initial in ((ctx.student, start), (ctx.head, ctx.head_initial)):
            for key, value in module.state_dict().items():
                if value.is_floating_point():
                    value.copy_((1 - a) * initial[key].to(value) + a * value)
