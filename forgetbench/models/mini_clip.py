"""The mini CLIP: a tiny open_clip model pre-trained on the mini world, shipped as fp16 safetensors."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

from .base import MODELS, Model
from .openclip import wrap_openclip
from .weights_io import load_checked

CONFIG_NAME = "forgetbench-mini-clip"
WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS_DIR / "mini-clip.json"  # file name, sha256 and the command that regenerates the weights


def build_untrained(seed: int = 0) -> torch.nn.Module:
    """The mini CLIP architecture with freshly initialised weights (deterministic for a seed)."""
    from .openclip import _quiet

    torch.manual_seed(seed)
    with _quiet():  # open_clip warns that no weights were loaded: the caller loads them
        return open_clip.create_model(CONFIG_NAME, pretrained=None)


def load_pretrained(weights: Path | None = None, expected_sha256: str | None = None) -> torch.nn.Module:
    """The shipped pre-trained mini CLIP (or ``weights``), after checking the file's sha256. Never unpickles."""
    if weights is None:
        if not MANIFEST.exists():
            raise_missing()
        manifest = json.loads(MANIFEST.read_text())
        weights, expected_sha256 = WEIGHTS_DIR / manifest["file"], manifest["sha256"]
    state = load_checked(weights, expected_sha256, regenerate_hint="regenerate it with `forgetbench pretrain-mini`")
    clip = build_untrained()
    clip.load_state_dict({k: v.float() for k, v in state.items()})
    return clip


def raise_missing():
    from ..errors import WeightsError

    raise WeightsError(f"no shipped mini CLIP weights ({MANIFEST.name} missing); create them with `forgetbench pretrain-mini`")


def preprocess_for(clip: torch.nn.Module):
    return open_clip.image_transform(clip.visual.image_size, is_train=False)


def as_model(clip: torch.nn.Module) -> Model:
    """A mini CLIP (the shipped one, or a candidate from ``pretrain-mini --out``) as the project's Model."""
    return wrap_openclip("mini-clip", CONFIG_NAME, clip, preprocess_for(clip))


@MODELS.register("mini-clip")
def mini_clip() -> Model:
    return as_model(load_pretrained())
