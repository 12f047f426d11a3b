"""The Model noun: an image encoder to fine-tune, its preprocessing, and (when it has one) a frozen text tower."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import SpecError, UnknownNameError
from ..registry import Registry

class _ModelRegistry(Registry):
    """Registered names (``mini-clip``) plus spec strings (``openclip:ViT-B-32@openai``), resolved on lookup.

    A registered builder that declares ``options`` (name -> type) also takes them after a ``?``:
    ``efficientnet-lite0?img_size=64`` builds ``builder(img_size=64)``.
    """

    def __init__(self, kind: str):
        super().__init__(kind)
        self._resolvers: dict[str, Callable[[str], Callable[[], "Model"]]] = {}
        self._syntax = ""

    def add_resolver(self, families, resolve: Callable[[str], Callable[[], "Model"]], syntax: str) -> None:
        """``resolve(spec)`` checks a spec string of one of ``families`` and returns its builder."""
        self._resolvers.update({f: resolve for f in families})
        self._syntax = syntax

    def get(self, name: str):
        self._load()
        family = name.partition(":")[0] if ":" in name else None
        if family in self._resolvers and name not in self._items:
            return self._resolvers[family](name)
        base, sep, query = name.partition("?")
        if sep and family is None and base in self._items:  # a registered model with options: NAME?img_size=64
            builder = self._items[base]
            options = parse_options(name, query, getattr(builder, "options", {}), base)

            def build() -> Model:
                model = builder(**options)
                model.name = name
                return model
            return build
        try:
            return super().get(name)
        except UnknownNameError as e:
            if self._syntax:
                raise UnknownNameError(f"{e}; or a model spec: {self._syntax}") from None
            raise


def parse_options(text: str, query: str, accepted: dict[str, type], owner: str) -> dict:
    """``key=value&...`` after the ``?`` of a model name or spec, checked against ``accepted`` (name -> int)."""
    options = {}
    for item in filter(None, query.split("&")):
        key, eq, raw = item.partition("=")
        if key not in accepted or not eq:
            raise SpecError(f"model spec {text!r}: unknown option {item!r} (accepted for {owner}: "
                            f"{', '.join(f'{k}=N' for k in accepted) or 'none'})")
        value = accepted[key](raw) if raw.isdigit() else 0  # a positive integer (the only kind of option so far)
        if value <= 0:
            raise SpecError(f"model spec {text!r}: option {key} must be an integer > 0, got {raw!r}")
        options[key] = value
    return options


#: Every model forgetbench can build, by name or spec string. Entries are zero-argument builders returning a ``Model``.
MODELS = _ModelRegistry("model")


@dataclass
class Model:
    """A foundation model as forgetbench sees it.

    ``visual`` maps preprocessed images [B, 3, H, W] to features [B, D]; it is the part that gets fine-tuned.
    ``encode_text`` (None for image-only models such as DINOv2) maps prompts to unnormalised embeddings [N, D] with
    the frozen text tower; zero-shot metrics and zero-shot head initialisation need it.
    ``preprocess_id`` names the preprocessing exactly: it is part of feature-cache keys.
    """

    name: str
    visual: nn.Module
    preprocess: Callable
    preprocess_id: str
    feature_dim: int
    encode_text: Optional[Callable[[list[str]], torch.Tensor]] = None
    logit_scale: float = 100.0
    #: the open_clip CLIP behind ``encode_text`` and its tokenizer (prompts -> token ids): what prompt tuning reads the
    #: token embedding, positional embedding, text transformer and projection from (None for other models)
    text_model: Optional[nn.Module] = None
    tokenize: Optional[Callable[[list[str]], torch.Tensor]] = None

    @property
    def has_text(self) -> bool:
        return self.encode_text is not None


def state_dict_hash(module_or_state: nn.Module | dict) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor: the identity of a set of weights."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        # reshape: a 0-d tensor (BatchNorm's counter) cannot be viewed as bytes; the bytes of the others are unchanged
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def get_model(name: str) -> Model:
    """Build a registered model by name (unknown names fail with did-you-mean suggestions)."""
    return MODELS.get(name)()
