"""Class names and zero-shot prompt templates of the real datasets (read on first use, never at import).

Most come from ``prompts.json`` beside this file (its ``_about`` entry gives the sources). The ImageNet family uses
the CLIP paper's 1000 class names and 80 templates as open_clip ships them, and the WordNet ids and ImageNet-R / -A
class subsets as timm ships them, so the label order is the standard sorted-wnid order.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

PROMPTS_FILE = Path(__file__).with_name("prompts.json")


@lru_cache(maxsize=None)
def _table() -> dict:
    return json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))


def _timm_info(name: str) -> list[str]:
    import timm.data

    return (Path(timm.data.__file__).parent / "_info" / name).read_text().split()


@lru_cache(maxsize=None)
def imagenet_wnids() -> list[str]:
    return _timm_info("imagenet_synsets.txt")


@lru_cache(maxsize=None)
def imagenet_subset(which: str) -> tuple[list[str], list[int]]:
    """(wnids, indices into the 1000 classes) of ImageNet-R ("r"), ImageNet-A ("a") or all of ImageNet ("all")."""
    if which == "all":
        return imagenet_wnids(), list(range(1000))
    return _timm_info(f"imagenet_{which}_synsets.txt"), [int(i) for i in _timm_info(f"imagenet_{which}_indices.txt")]


def _imagenet(indices: list[int]) -> dict:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return {"classes": [IMAGENET_CLASSNAMES[i] for i in indices],
            "templates": [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]}


@lru_cache(maxsize=None)
def prompts(key: str) -> dict:
    """{"classes": [...], "templates": [...], "raw": [...] (on-disk class identifiers, when the format has them)}."""
    if key == "imagenet":
        return _imagenet(list(range(1000)))
    if key in ("imagenet-r", "imagenet-a"):
        return _imagenet(imagenet_subset(key[-1])[1])
    return _table()[key]
