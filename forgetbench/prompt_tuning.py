"""Few-shot prompt tuning (CoOp): learned context vectors in the text prompt, both towers of a CLIP frozen.

A class's prompt is "[SOT] [ctx_1] ... [ctx_M] [class name tokens] . [EOT]": the M context vectors (token-embedding
width) are the only trained parameters, shared by every class (CoOp's unified context, class token at the end). The
prompt is run through the frozen text transformer exactly as ``open_clip``'s ``encode_text`` runs a tokenised prompt,
from the embeddings instead of the token ids, so that context initialised from the embeddings of words ("a photo of
a") gives the very text features of the hand-crafted prompt "a photo of a [class].".

The methods that regularise it (``baselines/coop.py``, ``kgcoop.py``, ``coop_proxy_fda.py``) are ``PromptMethod``
subclasses: the hooks of every method (``setup``, ``loss``, ...), called with a ``PromptContext`` and a
``PromptBatch`` instead of a fine-tune's. They run under the ``prompt-tuning`` protocol only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError, SpecError
from .methods import Method

#: The protocol whose runs call these methods' hooks.
PROTOCOL = "prompt-tuning"
CONTEXT_STD = 0.02  # CoOp's random context initialisation: normal, std 0.02


def harmonic_mean(base: float, new: float) -> float:
    """H = 2 base new / (base + new), CoCoOp's summary of base and new accuracy (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def base_new_classes(n_classes: int, rule: str = "first-half") -> tuple[list[int], list[int]]:
    """(base, new) class indices: "first-half" takes the first ceil(C/2) classes by index as base (CoOp's
    ``subsample_classes``), the rest as new."""
    if rule != "first-half":
        raise SpecError(f"unknown base/new split rule {rule!r} (known: first-half)")
    m = math.ceil(n_classes / 2)
    return list(range(m)), list(range(m, n_classes))


def kshot_indices(labels: np.ndarray, classes: list[int], shots: int, seed: int) -> np.ndarray:
    """Indices (sorted) of ``shots`` training samples of each class in ``classes``, drawn without replacement by
    ``seed``; samples of other classes are never drawn. A class with fewer samples than ``shots`` is a DataError."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            raise DataError(f"class {c} has {len(pool)} training samples, fewer than the {shots} shots asked for; "
                            f"lower prompt_tuning.shots")
        picked.append(rng.choice(pool, size=shots, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _text_tower(clip: nn.Module) -> nn.Module:
    """The module holding the text transformer's parts: the CLIP itself, or its ``text`` tower (CustomTextCLIP)."""
    tower = getattr(clip, "text", clip)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
    missing = [n for n in needed if not hasattr(tower, n)]
    if missing or getattr(tower, "cls_emb", None) is not None:
        raise SpecError(f"prompt tuning needs a CLIP-style text transformer; this text tower lacks "
                        f"{', '.join(missing) or 'nothing but has a class embedding'}")
    return tower


def encode_embedded(clip: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Text features [N, D] of prompts given as token embeddings [N, L, W] (``tokens`` [N, L]: the ids they stand
    for, which say where each prompt ends): ``open_clip``'s ``encode_text`` after its embedding lookup."""
    from open_clip.transformer import text_global_pool

    tower = _text_tower(clip)
    cast = tower.transformer.get_cast_dtype()
    x = embeddings.to(cast) + tower.positional_embedding.to(cast)
    x = tower.transformer(x, attn_mask=tower.attn_mask)
    x = tower.ln_final(x)
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
    x = text_global_pool(x, tokens, pool, eos_token_id=getattr(tower, "text_eos_id", None))
    projection = tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x


def context_words(tokenize: Any, words: str) -> int:
    """How many tokens ``words`` take (without the start and end tokens)."""
    ids = tokenize([words])[0]
    return int((ids != 0).sum()) - 2


class PromptLearner(nn.Module):
    """The learned context (``ctx`` [M, W], the only parameter) and the frozen rest of each class's prompt."""

    def __init__(self, model: Any, classnames: list[str], n_ctx: int, init: Optional[str], seed: int, device: str):
        super().__init__()
        if model.text_model is None or model.tokenize is None:
            raise SpecError(f"model {model.name!r} has no open_clip text tower: prompt tuning needs one")
        clip, tokenize = model.text_model, model.tokenize
        embed = _text_tower(clip).token_embedding
        if init is not None:
            if context_words(tokenize, init) != n_ctx:
                raise SpecError(f"prompt_tuning.context_init {init!r} is {context_words(tokenize, init)} tokens but "
                                f"context_tokens is {n_ctx}; make them agree")
            placeholder = init
        else:
            placeholder = " ".join(["X"] * n_ctx)  # CoOp's placeholder words, replaced by the vectors
        self.clip = clip
        self.prompts = [f"{placeholder} {name.replace('_', ' ')}." for name in classnames]
        tokens = tokenize(self.prompts).to(device)
        if int(tokens.argmax(-1).min()) < n_ctx + 2:
            raise SpecError(f"a prompt of {n_ctx} context tokens does not fit the text tower's context length")
        with torch.no_grad():
            embedded = embed(tokens).float()
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1], persistent=False)  # start token
        self.register_buffer("suffix", embedded[:, 1 + n_ctx:], persistent=False)  # class, ".", end, padding
        if init is not None:
            ctx = embedded[0, 1:1 + n_ctx].clone()
        else:
            ctx = torch.randn(n_ctx, embedded.shape[-1], generator=torch.Generator().manual_seed(seed)) * CONTEXT_STD
        self.ctx = nn.Parameter(ctx.to(device))

    def forward(self) -> torch.Tensor:
        """Unnormalised text features [C, D] of every class's prompt with the current context."""
        n = len(self.tokens)
        embeddings = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(n, -1, -1), self.suffix], dim=1)
        return encode_embedded(self.clip, embeddings, self.tokens).float()


@dataclass
class PromptContext:
    """What a prompt-tuning method may look at during one dataset's training."""

    learner: PromptLearner  # the learned context and the frozen rest of the prompts of the base classes
    handcrafted: torch.Tensor  # [C_base, D] normalised text features of the dataset's hand-crafted prompts
    dataset: str
    classnames: list[str]  # the base classes, in label order
    task: Any
    device: str = "cpu"
    train_features: Optional[torch.Tensor] = None  # [N, D] frozen image features of the K-shot training set
    train_labels: Optional[torch.Tensor] = None
    state: dict = field(default_factory=dict)  # scratch space for methods


@dataclass
class PromptBatch:
    """One step: image features (frozen, normalised), their base-class labels, and the classes' text features."""

    image_features: torch.Tensor  # [B, D]
    labels: torch.Tensor  # [B]
    text_features: torch.Tensor  # [C_base, D], normalised, from the learned prompts (with gradient)
    logits: torch.Tensor  # [B, C_base]


class PromptMethod(Method):
    """A method of the ``prompt-tuning`` protocol: its hooks receive a ``PromptContext`` and a ``PromptBatch``."""

    protocol: ClassVar[str] = PROTOCOL
