"""L2-SP: penalise the squared distance of the encoder weights to the starting point."""

from forgetbench.methods import Method, Param, register
from forgetbench.methods import Strength


@register
class L2SP(Method):
    name = "l2sp"
    description = "alpha * sum ||theta - theta_0||^2 over encoder weights (no 1/2, as in the LDIFS code)"
    citation = "Li, Grandvalet, Davoine, ICML 2018; variant of omegafragger/ldifs_code"
    hyperparameters = {"alpha": Param(0.5, ge=0)}
    strength = Strength("alpha", grid=(0.001, 0.01, 0.1, 1.0, 10.0, 100.0))

    def setup(self, ctx):
        frozen = dict(ctx.frozen.named_parameters())
        self._pairs = [(p, frozen[n].detach()) for n, p in ctx.student.named_parameters() if p.requires_grad]

    def loss(self, ctx, batch):
        return self.params["alpha"] * sum(((p - p0) ** 2).sum() for p, p0 in self._pairs)
