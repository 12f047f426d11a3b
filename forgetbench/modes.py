"""Fine-tuning modes (``train.mode``): which parameters of the image encoder a fine-tune trains, whatever the method.

- ``full``: every encoder weight (the default, and what every record without a mode did);
- ``bitfit``: the encoder's biases only (Ben Zaken et al., 2022);
- ``lora``: low-rank updates of the attention projections, ``W + (alpha / rank) B A`` on the fused q/k/v projection
  and the output projection (Hu et al., 2022); ``B`` starts at zero. Written with ``torch.nn.utils.parametrize``
  rather than ``peft``: peft wraps ``nn.MultiheadAttention`` (open_clip's attention, with its fused
  ``in_proj_weight``) only through an experimental layer that merges and unmerges the weights inside every forward
  pass and replaces the module (new state-dict keys); a parametrization leaves the module as it is, applies to
  open_clip's ``in_proj_weight`` and timm's ``qkv`` Linear alike, and merging is ``remove_parametrizations``;
- ``vpt``: learned prompt tokens after the class token (Jia et al., 2022): at the input only (shallow) or replaced
  at every block (deep, ``peft.vpt_deep``); they are dropped again before pooling;
- ``adapter``: a bottleneck (down, GELU, up) added residually to each block's output (Houlsby et al., 2019), its
  up-projection zero-initialised so that step 0 is the pre-trained model;
- ``vqt``: Visual Query Tuning (Tu, Mai and Chao, 2023): learned query tokens per block attend to that block's input
  (the backbone's own tokens never see them, so its features are unchanged); their outputs, through a
  zero-initialised linear map, are added to the pre-trained features the head reads;
- ``linear``: the head only (the encoder frozen).

The mode's added parameters live in the encoder module (``ModeModule`` under ``MODULE_NAME``, or LoRA's
parametrizations), so checkpoints, devices and optimisers see them like any other weight. Except for ``vpt``, whose
tokens are attended from the start, zero steps in any mode give the pre-trained features exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import SpecError
from .models.taps import transformer_blocks

MODES = ("full", "bitfit", "lora", "vpt", "adapter", "vqt", "linear")
FULL = "full"
MODULE_NAME = "fb_mode"  # the submodule of the encoder that holds a mode's added parameters
#: Modes that add modules to the encoder: its state dict is no longer the pre-trained architecture's.
ADDS_MODULES = ("vpt", "adapter", "vqt")
#: The settings of each mode (``train.peft``) that are part of a run's identity.
SETTINGS = {"lora": ("lora_rank", "lora_alpha"), "vpt": ("vpt_tokens", "vpt_deep"), "adapter": ("adapter_dim",),
            "vqt": ("vqt_tokens",)}
#: Each mode's default trade-off grid of ``lr_scale`` (the knob of methods that regularise nothing, ``ft``), largest
#: (moves most) first. Full fine-tuning keeps the method's own grid; the parameter-efficient modes train few
#: parameters from zero or from a frozen start, so their useful learning rates sit above the full model's.
LR_SCALES = {"bitfit": (100.0, 30.0, 10.0, 3.0), "lora": (100.0, 30.0, 10.0, 3.0), "adapter": (100.0, 30.0, 10.0, 3.0),
             "vpt": (300.0, 100.0, 30.0, 10.0), "vqt": (300.0, 100.0, 30.0, 10.0), "linear": (300.0, 100.0, 30.0, 10.0)}
#: Shipped methods that need particular modes, and why (a method class may declare its own ``modes``).
NEEDS = {
    "l2sp": (("full", "bitfit"), "it pulls each trained encoder weight towards the pre-trained weight of the same "
                                 "name, which a mode's added parameters do not have"),
    "ewc": (("full", "bitfit"), "its Fisher penalty pairs each trained encoder weight with the pre-trained one of "
                                "the same name, which a mode's added parameters do not have"),
    "wise-ft": (("full", "bitfit", "lora", "linear"), "it interpolates the encoder's weights by name, and a mode "
                                                      "that adds modules has weights the pre-trained encoder lacks"),
    "ldifs": (("full", "bitfit", "lora", "adapter", "vqt", "linear"), "it compares the student's and the frozen "
                                                                      "encoder's block outputs token by token, and "
                                                                      "VPT's tokens change their number"),
}


def entry_label(method: str, mode: str) -> str:
    """How a method in a mode is named where methods are listed (selection, figures): ``ft``, ``ft (lora)``."""
    return method if mode == FULL else f"{method} ({mode})"


def split_label(label: str) -> tuple[str, str]:
    """``entry_label``'s inverse: ``ft (lora)`` -> ``("ft", "lora")``."""
    method, sep, rest = label.partition(" (")
    return (method, rest.rstrip(")")) if sep and rest.rstrip(")") in MODES else (label, FULL)


def mode_of(train: Any) -> str:
    """The mode of a ``train`` section (a TrainSpec or its JSON form); absent means ``full``."""
    mode = train.get("mode") if isinstance(train, Mapping) else getattr(train, "mode", None)
    return mode or FULL


def identity(train: Any) -> dict | None:
    """What of the mode belongs in a run's identity: None for ``full`` (so every record without a mode keeps its run
    id), else the mode and its resolved settings."""
    mode = mode_of(train)
    if mode == FULL:
        return None
    settings = settings_of(train)
    return {"mode": mode, **{k: getattr(settings, k) for k in SETTINGS.get(mode, ())}}


@dataclass(frozen=True)
class PeftDefaults:
    """The settings of the modes when a task declares none (``train.peft`` fills in what it names)."""

    lora_rank: int = 4
    lora_alpha: float = 8.0
    vpt_tokens: int = 4
    vpt_deep: bool = True
    adapter_dim: int = 16
    vqt_tokens: int = 2


SETTING_NAMES = tuple(PeftDefaults.__dataclass_fields__)


def check_pair(mode: str, method: Any) -> None:
    """Refuse, in one line and before any work, a method that makes no sense in ``mode``."""
    if mode == FULL:
        return
    if not method.trains_encoder:
        raise SpecError(f"method {method.name!r} trains no encoder (train.mode {mode!r} chooses which encoder "
                        f"parameters train); run it without a mode")
    declared = getattr(method, "modes", None)
    allowed, why = (tuple(declared), f"method {method.name!r} declares the modes it runs in") \
        if declared is not None else NEEDS.get(method.name, (MODES, ""))
    if mode == "linear" and declared is None and _overrides_loss(method):
        allowed, why = tuple(m for m in allowed if m != "linear"), "its loss regularises the encoder, which " \
                                                                   "train.mode linear freezes"
    if mode not in allowed:
        raise SpecError(f"method {method.name!r} cannot run with train.mode {mode!r}: {why} (modes it accepts: "
                        f"{', '.join(allowed)})")


def _overrides_loss(method: Any) -> bool:
    from .methods import Method

    cls = method if isinstance(method, type) else type(method)
    return cls.loss is not Method.loss


# ------------------------------------------------------------------------------------------------ applying a mode

def apply_mode(visual: nn.Module, train: Any) -> nn.Module:
    """Make ``visual`` (a fresh copy of the pre-trained encoder) train in ``train``'s mode: add the mode's modules
    and set ``requires_grad`` on exactly the parameters it trains. Returns ``visual``."""
    mode = mode_of(train)
    settings = settings_of(train)
    if mode == FULL:
        for p in visual.parameters():
            p.requires_grad_(True)
        return visual
    for p in visual.parameters():
        p.requires_grad_(False)
    if mode == "bitfit":
        for name, p in visual.named_parameters():
            if name.endswith("bias"):
                p.requires_grad_(True)
    elif mode == "lora":
        add_lora(visual, settings.lora_rank, settings.lora_alpha)
    elif mode in ADDS_MODULES:
        visual.add_module(MODULE_NAME, ModeModule(visual, mode, settings))
    elif mode != "linear":
        raise SpecError(f"train.mode: unknown mode {mode!r} (known: {', '.join(MODES)})")
    return visual


def settings_of(train: Any) -> "PeftDefaults":
    """The resolved mode settings of a ``train`` section (a TrainSpec or its JSON form): the task's, else defaults."""
    peft = train.get("peft") if isinstance(train, Mapping) else getattr(train, "peft", None)
    given = peft if isinstance(peft, Mapping) or peft is None else {k: getattr(peft, k) for k in SETTING_NAMES}
    return PeftDefaults(**{k: v for k, v in (given or {}).items() if v is not None and k in SETTING_NAMES})


# ---- LoRA

class LoRA(nn.Module):
    """A low-rank update of a weight: ``W + scale * B @ A`` (B zero at the start, so the weight is unchanged)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        out_features, in_features = weight.shape
        self.A = nn.Parameter(torch.empty(rank, in_features, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.A, a=5 ** 0.5)  # as LoRA's reference implementation
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A)


def attention_weights(visual: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, weight name) of every attention projection: open_clip's MultiheadAttention (fused q/k/v
    ``in_proj_weight`` and ``out_proj``), timm's Attention (``qkv`` and ``proj`` Linears)."""
    out = []
    for block in transformer_blocks(visual)[1]:
        attn = block.attn
        if isinstance(attn, nn.MultiheadAttention):
            if not attn._qkv_same_embed_dim:
                raise SpecError("train.mode lora: attention with separate q/k/v projections is not supported")
            out += [(attn, "in_proj_weight"), (attn.out_proj, "weight")]
        elif hasattr(attn, "qkv") and hasattr(attn, "proj"):
            out += [(attn.qkv, "weight"), (attn.proj, "weight")]
        else:
            raise SpecError(f"train.mode lora: don't know the attention projections of {type(attn).__name__}")
    return out


def add_lora(visual: nn.Module, rank: int, alpha: float) -> None:
    for module, name in attention_weights(visual):
        parametrize.register_parametrization(module, name, LoRA(getattr(module, name), rank, alpha))


def merge_lora(visual: nn.Module) -> None:
    """Fold every LoRA update into its weight: the encoder is the plain architecture again, same forward pass."""
    for module in list(visual.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                getattr(module, name).requires_grad_(False)


def finish(visual: nn.Module) -> None:
    """After training: LoRA merged into the weights (the other modes keep their modules)."""
    merge_lora(visual)


# ---- VPT, adapters, VQT: hooks on the encoder's own modules

def _layout(visual: nn.Module) -> tuple[list[nn.Module], int, nn.Module, int]:
    """(blocks, token dimension of a block's input, the module whose output is the token sequence before the first
    block, number of prefix tokens (class and register tokens))."""
    pre, blocks = transformer_blocks(visual)
    transformer = getattr(visual, "transformer", None)
    batch_first = getattr(transformer, "batch_first", True)
    prefix = getattr(visual, "num_prefix_tokens", 1)
    return blocks, 1 if batch_first else 0, pre, prefix


def _width(visual: nn.Module) -> int:
    blocks = transformer_blocks(visual)[1]
    norm = getattr(blocks[0], "ln_1", None) or getattr(blocks[0], "norm1")
    return norm.normalized_shape[0]


class ModeModule(nn.Module):
    """The added parameters of ``vpt``, ``adapter`` or ``vqt``, and the hooks that use them (bound methods, so that a
    deep copy of the encoder hooks its own copy)."""

    def __init__(self, visual: nn.Module, mode: str, settings: PeftDefaults):
        super().__init__()
        self.mode = mode
        blocks, self.token_dim, pre, self.prefix = _layout(visual)
        width, n = _width(visual), len(blocks)
        if mode == "vpt":
            self.tokens = settings.vpt_tokens
            depth = n if settings.vpt_deep else 1
            self.prompts = nn.Parameter(torch.randn(depth, settings.vpt_tokens, width) * 0.02)
            pre.register_forward_hook(self._insert_prompts)
            for i, block in enumerate(blocks[1:depth], start=1):
                block.register_forward_pre_hook(self._deep_prompts(i))
            end = getattr(visual, "transformer", None) or visual.blocks
            end.register_forward_hook(self._drop_prompts)
        elif mode == "adapter":
            self.adapters = nn.ModuleList(Bottleneck(width, settings.adapter_dim) for _ in blocks)
            for block, adapter in zip(blocks, self.adapters):
                block.register_forward_hook(adapter.hook)
        elif mode == "vqt":
            self.queries = nn.Parameter(torch.randn(n, settings.vqt_tokens, width) * 0.02)
            self.norm = nn.LayerNorm(width, elementwise_affine=False)
            self.readout = nn.Linear(n * settings.vqt_tokens * width, _feature_dim(visual), bias=False)
            nn.init.zeros_(self.readout.weight)  # step 0: the pre-trained features
            self._outputs: dict[int, torch.Tensor] = {}
            for i, block in enumerate(blocks):
                block.register_forward_pre_hook(self._query(i, block))
            visual.register_forward_hook(self._add_queries)

    # vpt
    def _insert_prompts(self, module, inputs, x):
        p = self.prompts[0].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :self.prefix], p, x[:, self.prefix:]], dim=1)  # the stem's output is batch-first

    def _deep_prompts(self, i: int):
        def hook(module, args):
            x = args[0]
            d, k = self.token_dim, self.prefix
            p = self.prompts[i].to(x.dtype)
            p = p.unsqueeze(0).expand(x.shape[0], -1, -1) if d == 1 else p.unsqueeze(1).expand(-1, x.shape[1], -1)
            x = torch.cat([x.narrow(d, 0, k), p, x.narrow(d, k + self.tokens, x.shape[d] - k - self.tokens)], dim=d)
            return (x, *args[1:])
        return hook

    def _drop_prompts(self, module, inputs, x):
        return torch.cat([x[:, :self.prefix], x[:, self.prefix + self.tokens:]], dim=1)  # output: batch-first

    # vqt
    def _query(self, i: int, block: nn.Module):
        def hook(module, args):
            x = args[0]
            d = self.token_dim
            q = self.queries[i].to(x.dtype)
            q = q.unsqueeze(0).expand(x.shape[0], -1, -1) if d == 1 else q.unsqueeze(1).expand(-1, x.shape[1], -1)
            # the block's own forward (not its __call__: no hooks run twice) on [tokens; queries]; only the queries'
            # rows are kept, so the tokens' path through the backbone is the pre-trained one
            out = block.forward(torch.cat([x, q], dim=d))
            self._outputs[i] = out.narrow(d, x.shape[d], q.shape[d]).movedim(d, 1)
        return hook

    def _add_queries(self, module, inputs, features):
        outs = [self.norm(self._outputs[i]) for i in range(len(self.queries))]
        self._outputs = {}
        return features + self.readout(torch.cat(outs, dim=1).flatten(1)).to(features.dtype)


class Bottleneck(nn.Module):
    """down (width -> dim), GELU, up (zero at the start), added to its input."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.down, self.up = nn.Linear(width, dim), nn.Linear(dim, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def hook(self, module, inputs, x):
        return x + self.up(nn.functional.gelu(self.down(x)))


def _feature_dim(visual: nn.Module) -> int:
    out = getattr(visual, "output_dim", None) or getattr(visual, "num_features", None)
    if out is None:
        raise SpecError(f"train.mode vqt: don't know the feature size of {type(visual).__name__}")
    return out
