"""LDIFS: keep the encoder's intermediate features close to the reference's (feature-space L2 at several depths)."""
import torch

from forgetbench.methods import Method, register
from forgetbench.models.taps import LayerTaps, ldifs_points


def _normalize_tokens(h: torch.Tensor) -> torch.Tensor:
    # dim=1 is the token axis of [B, T, C]: the reference code's (LPIPS-style) choice, kept for fidelity; on a
    # ConvNet's [B, C, H, W] maps it is the channel axis, LPIPS's own normalisation
    return h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


@register
class LDIFS(Method):
    name = "ldifs"
    description = "CE + alpha * mean over 5 depths of the squared distance of token-normalised features"
    reference = "Mukhoti et al., TMLR 2024 (omegafragger/ldifs_code)"
    defaults = {"alpha": 10.0}

    def setup(self, ctx):
        self._student_taps = LayerTaps(ldifs_points(ctx.student))
        self._reference_taps = LayerTaps(ldifs_points(ctx.reference))

    def loss(self, ctx, batch):
        student = self._student_taps.outputs  # filled by the student's forward pass of this step
        with torch.no_grad():
            self._reference_taps.clear()
            batch.reference_features(ctx)  # runs the reference forward pass (shared with other users of it)
            reference = self._reference_taps.outputs
        diffs = [(_normalize_tokens(s.float()) - _normalize_tokens(r.float())).pow(2).flatten(1).mean(1)
                 for s, r in zip(student, reference)]
        return self.params["alpha"] * torch.stack(diffs, 1).mean()

    def finalize(self, ctx):
        self._student_taps.remove()
        self._reference_taps.remove()
