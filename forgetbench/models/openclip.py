"""open_clip models as forgetbench Models (the mini CLIP and, with downloaded weights, CLIP ViT-B/32 & co)."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

from .base import Model

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)  # so open_clip.create_model("forgetbench-mini-clip") builds the mini CLIP


def preprocess_id(config_name: str, clip: torch.nn.Module) -> str:
    """The preprocessing, spelled out, for cache keys: image size, mean, std, resize mode."""
    cfg = getattr(clip.visual, "preprocess_cfg", {}) or {}
    return f"openclip:{config_name}:" + json.dumps(cfg, sort_keys=True, default=str)


def wrap_openclip(name: str, config_name: str, clip: torch.nn.Module, preprocess) -> Model:
    """Wrap an open_clip CLIP: its visual tower is fine-tuned; the text tower stays frozen for zero-shot heads."""
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(config_name)

    @torch.no_grad()
    def encode_text(prompts: list[str]) -> torch.Tensor:
        device = next(clip.parameters()).device
        return clip.encode_text(tokenizer(prompts).to(device)).float()

    return Model(
        name=name,
        visual=clip.visual,
        preprocess=preprocess,
        preprocess_id=preprocess_id(config_name, clip),
        feature_dim=clip.visual.output_dim,
        encode_text=encode_text,
        logit_scale=float(clip.logit_scale.exp()),
    )
