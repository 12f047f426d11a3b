"""Models: the registry, safe weight loading, the mini CLIP and open_clip / timm wrappers."""
from .base import MODELS, Model, get_model, state_dict_hash
from . import mini_clip  # noqa: F401  (registers mini-clip)
from . import specs  # noqa: F401  (resolves openclip:/timm:/finetuned: spec strings)
from . import packaged  # noqa: F401  (registers efficientnet-lite0: weights from an installed package)
from .specs import parse_spec, save_finetuned

__all__ = ["MODELS", "Model", "get_model", "parse_spec", "save_finetuned", "state_dict_hash"]
