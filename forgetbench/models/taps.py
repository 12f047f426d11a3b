"""Capture intermediate activations of an image encoder (for feature-space regularisers such as LDIFS)."""
from __future__ import annotations

from torch import nn


class LayerTaps:
    """Forward hooks that keep the latest output of each given module, in order."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        self._latest: dict[int, object] = {}
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i):
        def hook(module, inputs, output):
            self._latest[i] = output[0] if isinstance(output, tuple) else output
        return hook

    @property
    def outputs(self) -> list:
        missing = [i for i in range(len(self.modules)) if i not in self._latest]
        if missing:
            raise RuntimeError("a tapped layer did not run in the last forward pass")
        return [self._latest[i] for i in range(len(self.modules))]

    def clear(self) -> None:
        self._latest.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def transformer_blocks(visual: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """(pre-transformer norm, blocks) of an open_clip VisionTransformer or a timm ViT."""
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):  # open_clip
        return visual.ln_pre, list(visual.transformer.resblocks)
    if hasattr(visual, "blocks") and hasattr(visual, "patch_embed"):  # timm VisionTransformer (also without a head)
        return getattr(visual, "norm_pre", None) or visual.patch_embed, list(visual.blocks)
    raise TypeError(f"don't know the transformer blocks of {type(visual).__name__}")


def feature_stages(visual: nn.Module) -> list[nn.Module]:
    """The stage outputs a timm ConvNet exposes as its feature pyramid (``feature_info``; EfficientNet: blocks 0, 1,
    2, 4, 6 at strides 2 to 32); empty when the model has none."""
    info = getattr(visual, "feature_info", None)
    entries = getattr(info, "info", info) or []  # a FeatureInfo object (features_only models) or a list of dicts
    return [visual.get_submodule(e["module"]) for e in entries if isinstance(e, dict) and e.get("module")]


def ldifs_points(visual: nn.Module, n_groups: int = 4) -> list[nn.Module]:
    """LDIFS's 5 feature points: after ln_pre, and after each of 4 equal groups of blocks (3, 6, 9, 12 of ViT-B).

    A ConvNet has no token sequence: its points are the stages of its feature pyramid, the same spread of depths from
    the stem to the last block (the LDIFS paper's points are ViT-only; this is forgetbench's counterpart).
    """
    try:
        pre, blocks = transformer_blocks(visual)
    except TypeError:
        stages = feature_stages(visual)
        if not stages:
            raise TypeError(f"LDIFS needs the transformer blocks or the feature stages (timm feature_info) of "
                            f"{type(visual).__name__}; it has neither") from None
        return stages
    ends = sorted({max(1, round(len(blocks) * k / n_groups)) for k in range(1, n_groups + 1)})
    return [pre] + [blocks[e - 1] for e in ends]
