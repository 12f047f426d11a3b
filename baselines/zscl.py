"""ZSCL: distil the zero-shot model's image-to-caption predictions on distillation images, and average weights.

ZSCL calls its distillation images and captions "reference" data; the hyper-parameters keep ZSCL's ``ref_`` names
(``ref_data``, ``ref_seed``, ``n_ref``, ``ref_batch``), which are part of every run's identity.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from forgetbench.baselines.flyp import require_text_tower
from forgetbench.baselines.lwf import distillation_kl
from forgetbench.errors import SpecError
from forgetbench.methods import Batch, FinetuneContext, Method, Param, Strength, register
from forgetbench.train import total_steps

DISTILLATION_DATA = ("mini-world",)


def snapshot_steps(n_steps: int, snapshots: int) -> list[int]:
    """The steps after which the weight average takes in the weights: ``snapshots`` - 1 evenly spaced steps of a
    ``n_steps`` run, the last one included (the initial weights are the first snapshot)."""
    return sorted({max(1, round(n_steps * i / (snapshots - 1))) for i in range(1, snapshots)}) if n_steps else []


def distillation_pairs(source: str, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(uint8 images [n, H, W, 3], captions) standing in for ZSCL's ImageNet images and Conceptual Captions."""
    if source == "mini-world":  # held-out scenes of the mini CLIP's pre-training distribution
        from forgetbench.pretrain import pretraining_pairs

        return pretraining_pairs(n, seed)
    raise SpecError(f"method 'zscl': unknown ref_data {source!r} (accepted: {', '.join(DISTILLATION_DATA)})")


@register
class ZSCL(Method):
    """Image-side distillation + weight ensemble (ZSCL's MTIL recipe, without its text-side loss or L2 term).

    - Teacher: the frozen encoder's logits exp(s) cos(f_0(x_d), g(t_d)) over the distillation captions; the
      student's are the same with f_theta. Loss lam * T^2 * KL(softmax(t/T) || softmax(s/T)) (KL instead of ZSCL's
      cross-entropy: same gradient), T = 2, one ``ref_batch`` of distillation images per step, cycling through ``n_ref``
      images in a seeded order. The teacher logits are computed once in setup (the frozen encoder never changes).
    - Distillation data (``ref_data``): "mini-world" = ``n_ref`` scenes and captions of the mini CLIP's pre-training
      distribution (ZSCL distils on ImageNet images and Conceptual Captions: pre-training-like data, not any task's),
      drawn from their own random stream with ``ref_seed`` 1 (the weights were pre-trained on seed 0's scenes). They
      are disjoint from every evaluated test set: the mini datasets draw their splits from other streams (named by
      concept and split) and the reference digits are glyphs of the digits' train split only; a test holds it. They
      are preprocessed by the model's own preprocessing, so any CLIP-like model can use them; for the real CLIP
      tasks no pre-training-like data ships offline, so ZSCL there distils on these mini scenes, far weaker than its
      ImageNet + CC recipe (read its real-task numbers with that in mind).
    - Weight ensemble: the average of ``snapshots`` (10) states of the encoder and head weights: the initial ones (as
      ZSCL's ``we_model`` starts from them) and ``snapshots`` - 1 taken at evenly spaced steps ending with the last
      (``snapshot_steps``); ``finalize`` loads the average. ZSCL averages every ``avg_freq`` iterations (100 in
      MTIL, 10 in its CIL configs), i.e. a number of snapshots that depends on the run's length: declaring the
      number keeps it about ten whatever the task's length (with avg_freq 100 a 64-step run averaged 3 states, about
      WiSE-FT at alpha 1/3). A run shorter than ``snapshots`` - 1 steps averages all of its states.
    - ZSCL's label smoothing 0.2 belongs to the task (``train.label_smoothing``), not to this method.
    """

    name = "zscl"
    description = "distillation on image-caption logits of the frozen model + running weight average"
    citation = "Zheng et al., Preventing Zero-Shot Transfer Degradation in Continual Learning, ICCV 2023"
    hyperparameters = {"lam": Param(1.0, ge=0), "T": Param(2.0, gt=0), "n_ref": Param(512, ge=1),
                       "ref_batch": Param(32, ge=1), "snapshots": Param(10, ge=2),
                       "ref_data": Param("mini-world", choices=DISTILLATION_DATA), "ref_seed": Param(1, ge=1)}
    strength = Strength("lam", grid=(0.01, 0.1, 1.0, 10.0, 100.0, 1000.0))  # the weight average is always on

    @torch.no_grad()
    def setup(self, ctx: FinetuneContext) -> Optional[list[dict]]:
        require_text_tower(ctx, self.name)
        p = self.params
        images, captions = distillation_pairs(p["ref_data"], p["n_ref"], p["ref_seed"])
        self.distill_images = torch.stack([ctx.model.preprocess(Image.fromarray(im)) for im in images])
        text = torch.cat([ctx.model.encode_text(captions[i: i + 256]).float() for i in range(0, len(captions), 256)])
        self.text = F.normalize(text, dim=-1).to(ctx.device)
        self.scale = float(ctx.model.logit_scale)
        teacher = [self.logits(ctx.frozen(self.distill_images[i: i + 256].to(ctx.device)))
                   for i in range(0, len(self.distill_images), 256)]
        self.teacher = torch.cat(teacher)
        self._order = torch.randperm(len(self.distill_images)).tolist()  # seeded by the run
        self._cursor = 0
        train = getattr(ctx.task, "train", None)
        n_steps = total_steps(train, len(ctx.train_dataset.split(ctx.task.finetune.train_split))) \
            if train is not None and ctx.train_dataset is not None else 0
        self.start_average(ctx, n_steps)
        return None

    def start_average(self, ctx: FinetuneContext, n_steps: int) -> None:
        """The weight ensemble of a run of ``n_steps`` steps: the initial weights, counted once."""
        self._merge_steps = snapshot_steps(n_steps, self.params["snapshots"])
        self._modules = {"student": ctx.student, "head": ctx.head}
        self._avg = {"student": {n: q.detach().clone() for n, q in ctx.student.named_parameters()},
                     "head": {n: ctx.head_initial.get(n, q).detach().clone().to(q)
                              for n, q in ctx.head.named_parameters()}}
        self._count, self._last_step, self._merged_at = 1, 0, 0

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features.float(), dim=-1) @ self.text.T

    def next_indices(self) -> list[int]:
        out = []
        while len(out) < self.params["ref_batch"]:
            if self._cursor == len(self._order):
                self._cursor = 0
            take = self._order[self._cursor: self._cursor + self.params["ref_batch"] - len(out)]
            out += take
            self._cursor += len(take)
        return out

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        idx = self.next_indices()
        student = ctx.student(self.distill_images[idx].to(ctx.device))
        with torch.autocast(batch.features.device.type, enabled=False):
            return self.params["lam"] * distillation_kl(self.teacher[idx], self.logits(student), self.params["T"])

    @torch.no_grad()
    def merge(self) -> None:
        """avg <- (count * avg + current) / (count + 1)."""
        for key, module in self._modules.items():
            for n, q in module.named_parameters():
                self._avg[key][n].mul_(self._count).add_(q.detach()).div_(self._count + 1)
        self._count += 1

    def after_step(self, ctx: FinetuneContext, step: int) -> None:
        self._last_step = step
        if step in self._merge_steps:
            self.merge()
            self._merged_at = step

    @torch.no_grad()
    def finalize(self, ctx: FinetuneContext) -> None:
        if self._last_step == 0:
            return  # no training step: the weights are the initial ones
        if self._merged_at != self._last_step:  # the run ended on another step than planned: its last state counts
            self.merge()
        for key, module in self._modules.items():
            for n, q in module.named_parameters():
                q.copy_(self._avg[key][n])
