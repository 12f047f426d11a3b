"""timm image encoders (DINOv2, MAE, supervised ViTs, ConvNets) as forgetbench Models: no text tower.

The classifier is removed (``num_classes=0``), so the model maps images to its pooled features. Weights pass through
timm's own checkpoint filter (position-embedding resampling, original DINOv2 / MAE key layouts) after forgetbench has
loaded them safely; timm itself never opens a file here. EfficientNet checkpoints in EfficientNet-PyTorch's key
layout (``_conv_stem``, ``_blocks.N``) are renamed to timm's first (``effnet_keys``).
"""
from __future__ import annotations

import json

import torch

from ..errors import WeightsError
from .base import Model
from .effnet_keys import is_effnet_pytorch, to_timm
from .hub import hf_weights_file
from .weights_io import load_state_file


def takes_img_size(name: str) -> bool:
    """Whether the architecture is built for one input size (ViTs: position embeddings); a ConvNet takes any size,
    so for it ``img_size`` only sets the preprocessing."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg is None or bool(cfg.fixed_input_size)


def _create(name: str, state: dict | None, img_size: int | None, source: str = "") -> torch.nn.Module:
    import timm

    kwargs = {"num_classes": 0, **({"img_size": img_size} if img_size and takes_img_size(name) else {})}
    if state is None:
        torch.manual_seed(0)  # random weights are the same on every call, so their features cache like any others
        return timm.create_model(name, pretrained=False, **kwargs)
    if is_effnet_pytorch(state):  # EfficientNet-PyTorch names: renamed to timm's for this model's stage depths
        model = timm.create_model(name, pretrained=False, **kwargs)
        if not hasattr(model, "blocks") or not hasattr(model, "conv_stem"):
            raise WeightsError(f"{source or 'the weights'}: an EfficientNet checkpoint, but timm model {name!r} is not "
                               f"an EfficientNet")
        state = to_timm(state, [len(stage) for stage in model.blocks], source or name)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
    except RuntimeError as e:  # load_state_dict's size / key mismatches
        raise WeightsError(f"the weights do not fit timm model {name!r}: {' '.join(str(e).split())[:300]}") from None


def pretrained_file(name: str, spec_text: str) -> str:
    """The local file of a timm model's default pre-trained weights (``name`` may carry a tag)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsError(f"timm model {name!r} has no pre-trained weights on the Hugging Face hub; give a file "
                           f"(timm:{name}@/path/weights.safetensors) or random weights (timm:{name}@random)")
    files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors", "pytorch_model.bin"]
    return hf_weights_file(cfg.hf_hub_id, files, spec_text,
                           alternative=f"give a file: timm:{name}@/path/weights.safetensors")


def wrap_timm(spec_text: str, model: torch.nn.Module, img_size: int | None) -> Model:
    from timm.data import create_transform, resolve_data_config

    overrides = {"input_size": (3, img_size, img_size)} if img_size else {}
    data_cfg = resolve_data_config(overrides, model=model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Model(
        name=spec_text,
        visual=model,
        preprocess=create_transform(**data_cfg),  # datasets hand over RGB images, so no conversion is needed here
        preprocess_id="timm:" + json.dumps(data_cfg, sort_keys=True, default=str),
        feature_dim=int(model.num_features),
        encode_text=None,  # no text tower: zero-shot metrics are skipped, heads start from a linear probe
    )


def build_timm(spec_text: str, name: str, weights: str | None, img_size: int | None) -> Model:
    """``weights``: None (the model's default pre-trained weights), "random", or a file path."""
    if weights == "random":
        state = None
    elif weights is None:
        state = load_state_file(pretrained_file(name, spec_text))
    else:
        state = load_state_file(weights)
    return wrap_timm(spec_text, _create(name, state, img_size, str(weights)), img_size)
