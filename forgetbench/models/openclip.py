"""open_clip models as forgetbench Models (the mini CLIP and, with downloaded weights, CLIP ViT-B/32 & co)."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
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
        text_model=clip,
        tokenize=tokenizer,
    )


def _load_into_clip(clip: torch.nn.Module, state: dict, source: str) -> None:
    """open_clip's own checkpoint massaging (third-party layouts, old text-tower keys, position embeddings), then a
    strict load; a mismatch is one WeightsError."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    from ..errors import WeightsError

    state = convert_state_dict(clip, state)
    if "positional_embedding" in state and not hasattr(clip, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(clip, key, None)
        if key in state and own is not None and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    resize_pos_embed(state, clip)
    resize_text_pos_embed(state, clip)
    try:
        clip.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"the weights in {source} do not fit this open_clip model: "
                           f"{' '.join(str(e).split())[:300]}") from None


def openclip_preprocess(clip: torch.nn.Module):
    """The evaluation transform open_clip defines for this model (size, mean / std, resize mode of its weights)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(clip)), is_train=False)


def _tag_files(arch: str, tag: str, cfg: dict) -> tuple[str, list[str]]:
    """(hub repo, file names to try, safetensors first) of an open_clip pretrained tag."""
    import os

    from ..errors import WeightsError

    if not cfg.get("hf_hub"):
        raise WeightsError(f"open_clip publishes the {arch}@{tag} weights only as a URL ({cfg.get('url')}); download "
                           f"them yourself and give the file: openclip:{arch}@/path/weights.safetensors")
    # "org/name/" (trailing slash: open_clip's default file names) or "org/name/file.bin"
    repo, filename = os.path.split(cfg["hf_hub"])
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if names[0].endswith((".bin", ".pth", ".pt")):
        names.insert(0, names[0].rsplit(".", 1)[0] + ".safetensors")
    return repo, names


def tag_weights_file(spec_text: str, arch: str, tag: str) -> str:
    """The local file of an open_clip pretrained tag; a WeightsError names what was looked for when it is absent."""
    from .hub import hf_weights_file

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    return hf_weights_file(*_tag_files(arch, tag, cfg), spec_text,
                           alternative=f"give a file: openclip:{arch}@/path/weights.safetensors")


@contextmanager
def _quiet():
    """open_clip logs a root-logger warning for every model built without its own weight loading (ours loads them)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def build_openclip(spec_text: str, arch: str, weights: str) -> Model:
    """``weights``: a pretrained tag of ``arch`` (from the local Hugging Face cache), "random", or a file path."""
    from .weights_io import load_state_file

    if weights == "random":
        torch.manual_seed(0)  # the same random weights on every call, so their features cache like any others
        with _quiet():
            clip = open_clip.create_model(arch, pretrained=None)
    else:
        cfg = open_clip.get_pretrained_cfg(arch, weights)
        if cfg:  # a tag: open_clip's hub repo, QuickGELU flag and preprocessing of those weights
            path = tag_weights_file(spec_text, arch, weights)
            pp = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
            with _quiet():
                clip = open_clip.create_model(arch, pretrained=None, force_quick_gelu=bool(cfg.get("quick_gelu")),
                                              force_preprocess_cfg=pp)
        else:
            path = weights
            with _quiet():
                clip = open_clip.create_model(arch, pretrained=None)
        _load_into_clip(clip, load_state_file(path), str(path))
    return wrap_openclip(spec_text, arch, clip, openclip_preprocess(clip))
