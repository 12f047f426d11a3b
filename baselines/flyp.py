"""FLYP: fine-tune like you pre-train — CLIP's contrastive loss between images and their class prompts."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from forgetbench.errors import SpecError
from forgetbench.pretrain import caption_aware_clip_loss
from forgetbench.methods import Batch, FinetuneContext, Method, Param, register
from forgetbench.methods import LR_SCALE, LR_STRENGTH


def require_text_tower(ctx: FinetuneContext, method: str) -> None:
    """One-line SpecError when the model has no text tower (DINOv2, timm models)."""
    if not getattr(ctx.model, "has_text", False):
        name = getattr(ctx.model, "name", "?")
        raise SpecError(f"method {method!r} needs a model with a text tower, and model {name!r} has none; "
                        f"use a CLIP-like model (e.g. mini-clip) or another method")


VOCABULARIES = ("task", "target")


def vocabulary_datasets(ctx: FinetuneContext, vocabulary: str = "task") -> list:
    """The datasets whose class names a text-side regulariser constrains (LwF, FD-Align): "target", the fine-tune
    dataset's; "task", those and the task's held-out datasets' (``evaluate.datasets``), each once."""
    from forgetbench.data import get_dataset

    out = [ctx.train_dataset] if ctx.train_dataset is not None else []
    if vocabulary == "task":
        names = {d.name for d in out}
        for name in getattr(getattr(ctx.task, "evaluate", None), "datasets", None) or []:
            if name not in names:
                out.append(get_dataset(name))
                names.add(name)
    return out


@torch.no_grad()
def prompt_embeddings(ctx: FinetuneContext, dataset=None) -> torch.Tensor:
    """[C, T, D] normalised text embeddings of every (class, template) prompt of ``dataset`` (default: the fine-tune
    dataset)."""
    ds = ctx.train_dataset if dataset is None else dataset
    prompts = [t.format(c) for c in ds.classnames for t in ds.templates]
    emb = F.normalize(ctx.model.encode_text(prompts).float(), dim=-1)
    return emb.reshape(len(ds.classnames), len(ds.templates), -1).to(ctx.device)


@register
class FLYP(Method):
    """weight * CLIP loss between the images and a prompt of their label (a random template per image and step).

    Deviations from FLYP, forced by the protocol: the text tower stays frozen (FLYP trains both towers), so the class
    prompts' embeddings are fixed; and the loop always adds the head's cross-entropy, so this is CE + CLIP loss, not
    the CLIP loss alone. Unlike FLYP's code, which counts the prompts of the other images of the same class in a batch
    as negatives (false negatives: with a few classes and batches of 64 most of a row's "negatives" name the image's
    own class), every same-class (image, prompt) pair of the batch is a positive, as in UniCL (Yang et al. 2022):
    the target of each row and column is uniform over its same-class pairs (``caption_aware_clip_loss``, which the
    mini CLIP's pre-training uses for its repeated captions). The logit scale is learned (init: the model's, no
    weight decay, capped at 100 like CLIP).
    """

    name = "flyp"
    description = "contrastive image / class-prompt loss with a learned logit scale (frozen text tower)"
    citation = "Goyal et al., Finetune like you pretrain, CVPR 2023 (locuslab/FLYP)"
    hyperparameters = {"weight": Param(1.0, ge=0)}
    hyperparameters["lr_scale"] = LR_SCALE  # a fine-tuning recipe: its strength is how far it trains, as ft's
    strength = LR_STRENGTH

    def setup(self, ctx: FinetuneContext) -> Optional[list[dict]]:
        require_text_tower(ctx, self.name)
        self.text = prompt_embeddings(ctx)
        self.log_scale = nn.Parameter(torch.tensor(math.log(ctx.model.logit_scale), device=ctx.device))
        self._gen = torch.Generator().manual_seed(torch.initial_seed() % 2 ** 63)  # the run's seed
        return [{"params": [self.log_scale], "weight_decay": 0.0}]

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        labels = batch.labels.long()
        template = torch.randint(self.text.shape[1], (len(labels),), generator=self._gen).to(labels.device)
        with torch.autocast(batch.features.device.type, enabled=False):
            scale = self.log_scale.exp().clamp(max=100.0)
            same_class = labels[:, None] == labels[None, :]
            return self.params["weight"] * caption_aware_clip_loss(
                F.normalize(batch.features.float(), dim=-1), F.normalize(self.text[labels, template], dim=-1), scale,
                same_class)
