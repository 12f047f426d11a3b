"""LDIFS: keep the encoder's intermediate features close to the frozen encoder's (feature-space L2 at several
depths)."""
import torch

from forgetbench.methods import Method, Param, register
from forgetbench.methods import Strength
from forgetbench.models.taps import LayerTaps, ldifs_points


def _normalize_tokens(h: torch.Tensor) -> torch.Tensor:
    # dim=1 is the token axis of [B, T, C]: the LDIFS code's (LPIPS-style) choice, kept for fidelity; on a
    # ConvNet's [B, C, H, W] maps it is the channel axis, LPIPS's own normalisation
    return h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


@register
class LDIFS(Method):
    name = "ldifs"
    description = "CE + alpha * mean over 5 depths of the squared distance of token-normalised features"
    citation = "Mukhoti et al., TMLR 2024 (omegafragger/ldifs_code)"
    hyperparameters = {"alpha": Param(10.0, ge=0)}
    strength = Strength("alpha", grid=(0.01, 0.1, 1.0, 10.0, 100.0, 1000.0))

    def setup(self, ctx):
        self._student_taps = LayerTaps(ldifs_points(ctx.student))
        self._frozen_taps = LayerTaps(ldifs_points(ctx.frozen))

    def loss(self, ctx, batch):
        student = self._student_taps.outputs  # filled by the student's forward pass of this step
        with torch.no_grad():
            self._frozen_taps.clear()
            batch.frozen_features(ctx)  # runs the frozen encoder's forward pass (shared with other users of it)
            frozen = self._frozen_taps.outputs
        diffs = [(_normalize_tokens(s.float()) - _normalize_tokens(r.float())).pow(2).flatten(1).mean(1)
                 for s, r in zip(student, frozen)]
        return self.params["alpha"] * torch.stack(diffs, 1).mean()

    def finalize(self, ctx):
        self._student_taps.remove()
        self._frozen_taps.remove()
