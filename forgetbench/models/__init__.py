"""Models: the registry, safe weight loading, the mini CLIP and open_clip / timm wrappers."""
from .base import MODELS, Model, get_model, state_dict_hash
from . import mini_clip  # noqa: F401  (registers mini-clip)

__all__ = ["MODELS", "Model", "get_model", "state_dict_hash"]
